"""DRF API for routing rules: the same rules, targets and figures as the pages.

Rules are scoped to the caller's projects (another tenant's rule is a 404);
writes follow the role matrix (apps/tenancy/permissions.py: owners, and team
leads on their team's projects; others get a 403). Targets are
lists of the lines the form takes: ``"gpt-4o-mini @ openai 90"``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.money import plain_amount
from apps.keys.models import ApiKey
from apps.keys.selectors import keys_visible
from apps.routing.models import RoutingRule
from apps.routing.selectors import rule_stats, shadow_summary_by_day, stats_window
from apps.routing.services import TARGET_ROLES, rule_delete, rule_move, rule_save, targets_parse, targets_text
from apps.tenancy.drf import VisibleRelated, writes_need
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, can
from apps.tenancy.selectors import projects_for
from costcontrol.forms import service_error_detail


class RuleSerializer(serializers.ModelSerializer):
    project = VisibleRelated(slug_field="slug", queryset=Project.objects.all())
    match_api_key = VisibleRelated(
        slug_field="lookup_id", queryset=ApiKey.objects.all(), visible=keys_visible, required=False, allow_null=True
    )
    primaries = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    fallbacks = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    shadow = serializers.ListField(child=serializers.CharField(), required=False, default=list, max_length=1)

    class Meta:
        model = RoutingRule
        fields = [
            "id", "project", "name", "position", "is_active", "match_models", "match_features", "match_end_users",
            "match_api_key", "min_prompt_tokens", "max_prompt_tokens", "match_tools", "match_regex", "action",
            "cascade_threshold", "cascade_tokens", "cascade_aggregate", "cascade_escalate_new_labels",
            "cascade_labels", "shadow_percent", "shadow_confidence", "primaries", "fallbacks", "shadow", "created_at",
            "updated_at",
        ]  # fmt: skip
        # A cascade trial's mark (apps.opportunities): its trial turns it on and off.
        read_only_fields = ["id", "position", "shadow_confidence", "created_at", "updated_at"]

    def to_representation(self, rule: RoutingRule) -> dict[str, Any]:
        data = super().to_representation(rule)
        targets = list(rule.targets.all())
        for name, role in TARGET_ROLES.items():
            data[name] = [line for line in targets_text([t for t in targets if t.role == role]).splitlines()]
        return data

    def _save(self, validated: dict[str, Any], rule: RoutingRule | None) -> RoutingRule:
        project: Project = rule.project if rule is not None else validated["project"]
        if not can(self.context["request"].user, Action.PROJECT_MANAGE, project):
            raise PermissionDenied("Your role does not allow changing this project's routing rules.")
        validated.pop("project", None)  # a rule never moves between projects
        key = validated.get("match_api_key")
        if key is not None and key.project_id != project.id:
            raise serializers.ValidationError({"match_api_key": "Pick a key of the rule's project."})
        try:
            specs = {}
            for name in TARGET_ROLES:
                lines = validated.pop(name, None)
                if lines is None and rule is not None:  # partial update: keep the rule's targets
                    lines = targets_text([t for t in rule.targets.all() if t.role == TARGET_ROLES[name]]).splitlines()
                try:
                    specs[name] = targets_parse(project=project, text="\n".join(lines or ()))
                except DjangoValidationError as exc:
                    raise serializers.ValidationError({name: exc.messages}) from None
            return rule_save(project=project, rule=rule, fields=validated, **specs)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None

    def create(self, validated: dict[str, Any]) -> RoutingRule:
        return self._save(validated, None)

    def update(self, instance: RoutingRule, validated: dict[str, Any]) -> RoutingRule:
        if self.partial:
            for name in TARGET_ROLES:
                if name not in self.initial_data:
                    validated.pop(name, None)
        return self._save(validated, instance)


def _rules(request: Request) -> QuerySet[RoutingRule]:
    return (
        RoutingRule.objects.filter(project__in=projects_for(user=request.user))
        .select_related("project", "match_api_key")
        .prefetch_related("targets__provider")
        .order_by("project_id", "position", "id")
    )


class RuleList(generics.ListCreateAPIView):
    serializer_class = RuleSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.PROJECT_MANAGE)]

    def get_queryset(self) -> QuerySet[RoutingRule]:
        return _rules(self.request)


class RuleDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = RuleSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.PROJECT_MANAGE)]

    def get_queryset(self) -> QuerySet[RoutingRule]:
        return _rules(self.request)

    def perform_destroy(self, instance: RoutingRule) -> None:
        rule_delete(rule=instance)


class _ShadowDay(serializers.Serializer):
    day = serializers.DateField()
    samples = serializers.IntegerField()
    agreement_percent = serializers.FloatField()
    exact_matches = serializers.IntegerField()
    mean_similarity = serializers.FloatField(allow_null=True)
    primary_latency_ms = serializers.FloatField(allow_null=True)
    shadow_latency_ms = serializers.FloatField(allow_null=True)
    primary_cost_usd = serializers.DecimalField(max_digits=30, decimal_places=12)
    shadow_cost_usd = serializers.DecimalField(max_digits=30, decimal_places=12)
    shadow_errors = serializers.IntegerField()


class RuleStatsSerializer(serializers.Serializer):
    rule = serializers.IntegerField()
    since = serializers.DateTimeField()
    requests = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=30, decimal_places=12)
    saved_usd = serializers.DecimalField(max_digits=30, decimal_places=12)
    escalations = serializers.IntegerField()
    escalation_rate_percent = serializers.FloatField(allow_null=True)
    fallbacks = serializers.IntegerField()
    errors = serializers.IntegerField()
    shadow_by_day = _ShadowDay(many=True)


class RuleStatsView(APIView):
    """What a rule did in the last 30 days, and its shadow comparison per day."""

    @extend_schema(responses=RuleStatsSerializer)
    def get(self, request: Request, pk: int) -> Response:
        rule = generics.get_object_or_404(_rules(request), pk=pk)
        since = stats_window()
        stats = rule_stats(project=rule.project, since=since).get(rule.id)
        days = shadow_summary_by_day(rule=rule, since=since)
        return Response(
            {
                "rule": rule.id,
                "since": since,
                "requests": stats.requests if stats else 0,
                "cost_usd": plain_amount(stats.cost) if stats else "0",
                "saved_usd": plain_amount(stats.saved) if stats else "0",
                "escalations": stats.escalations if stats else 0,
                "escalation_rate_percent": stats.escalation_rate if stats else None,
                "fallbacks": stats.fallbacks if stats else 0,
                "errors": stats.errors if stats else 0,
                "shadow_by_day": [
                    {
                        "day": d["day"].date().isoformat(),
                        "samples": d["samples"],
                        "agreement_percent": round(d["agreement"], 2),
                        "exact_matches": d["exact"],
                        "mean_similarity": d["similarity"],
                        "primary_latency_ms": d["primary_latency"],
                        "shadow_latency_ms": d["shadow_latency"],
                        "primary_cost_usd": plain_amount(d["primary_cost"]),
                        "shadow_cost_usd": plain_amount(d["shadow_cost"]),
                        "shadow_errors": d["failed"],
                    }
                    for d in days
                ],
            }
        )


class RuleMoveSerializer(serializers.Serializer):
    direction = serializers.ChoiceField(choices=["up", "down"], help_text="Up: decided earlier")


class RuleMove(APIView):
    """Move a rule one place up or down in its project's order (the first matching rule decides)."""

    @extend_schema(request=RuleMoveSerializer, responses=RuleSerializer)
    def post(self, request: Request, pk: int) -> Response:
        rule = generics.get_object_or_404(_rules(request), pk=pk)
        if not can(request.user, Action.PROJECT_MANAGE, rule.project):
            raise PermissionDenied("Your role does not allow changing this project's routing rules.")
        payload = RuleMoveSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        rule_move(rule=rule, offset=-1 if payload.validated_data["direction"] == "up" else 1)
        rule.refresh_from_db()
        return Response(RuleSerializer(rule, context={"request": request}).data)
