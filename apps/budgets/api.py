"""DRF API for budgets, rate limits, notification channels and alerts.

Every queryset is scoped to what the caller may see (the role matrix in
apps/tenancy/permissions.py), so another tenant's row, or another team's, is a
404; writes the caller's role does not allow on the row are a 403.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.budgets import services
from apps.budgets.models import Alert, Budget, NotificationChannel, RateLimit
from apps.budgets.selectors import alerts_visible, budget_status, budgets_visible, channels_visible
from apps.core.money import plain_amount
from apps.keys.models import ApiKey
from apps.keys.selectors import keys_visible
from apps.tenancy.drf import VisibleRelated, request_user, writes_need
from apps.tenancy.models import Organization, Project, Team
from apps.tenancy.permissions import Action, can, shown
from apps.tenancy.selectors import projects_for
from costcontrol.forms import service_error_detail

MICRO = Decimal("0.000001")


def _require(serializer: serializers.Serializer, action: Action, obj: Any) -> None:
    """A 403 when the caller's role does not allow ``action`` on the row as it would be saved."""
    if not can(serializer.context["request"].user, action, obj):
        raise PermissionDenied(f"Your role does not allow {action.value} here.")


class BudgetSerializer(serializers.ModelSerializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    team = VisibleRelated(slug_field="slug", queryset=Team.objects.all(), required=False, allow_null=True)
    project = VisibleRelated(slug_field="slug", queryset=Project.objects.all(), required=False, allow_null=True)
    api_key = VisibleRelated(
        slug_field="lookup_id", queryset=ApiKey.objects.all(), visible=keys_visible, required=False, allow_null=True
    )

    class Meta:
        model = Budget
        fields = [
            "id", "organization", "name", "scope", "team", "project", "api_key", "feature", "end_user",
            "amount_usd", "period", "timezone", "starts_at", "mode", "alert_thresholds", "is_active", "created_at",
        ]  # fmt: skip
        read_only_fields = ["id", "created_at"]

    def create(self, validated: dict[str, Any]) -> Budget:
        _require(self, Action.BUDGET_MANAGE, Budget(**validated))
        is_active = validated.pop("is_active", True)
        try:
            budget = services.budget_create(timezone_name=validated.pop("timezone", "UTC"), **validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None
        if not is_active:
            budget.is_active = False
            budget.save(update_fields=["is_active"])
        return budget

    def update(self, instance: Budget, validated: dict[str, Any]) -> Budget:
        validated.pop("organization", None)  # a budget never moves between organisations
        # Checked on the budget as it would be saved: e.g. a lead turning a project budget into a team one.
        candidate = copy.copy(instance)
        for field, value in validated.items():
            setattr(candidate, field, value)
        _require(self, Action.BUDGET_MANAGE, candidate)
        try:
            return services.budget_update(budget=instance, **validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None


class BudgetList(generics.ListCreateAPIView):
    serializer_class = BudgetSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.BUDGET_MANAGE)]

    def get_queryset(self) -> QuerySet[Budget]:
        return budgets_visible(user=self.request.user).order_by("id")


class BudgetDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = BudgetSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.BUDGET_MANAGE)]

    def get_queryset(self) -> QuerySet[Budget]:
        return BudgetList.get_queryset(self)

    def perform_destroy(self, instance: Budget) -> None:
        services.budget_delete(budget=instance)


class BudgetStatusSerializer(serializers.Serializer):
    budget = serializers.IntegerField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(allow_null=True)
    amount_usd = serializers.DecimalField(max_digits=30, decimal_places=12)
    spent_usd = serializers.DecimalField(max_digits=30, decimal_places=12)
    percent_used = serializers.FloatField()
    burn_usd_per_day = serializers.DecimalField(max_digits=30, decimal_places=6)
    projected_usd = serializers.DecimalField(max_digits=30, decimal_places=6, allow_null=True)


class BudgetStatusView(APIView):
    @extend_schema(responses=BudgetStatusSerializer)
    def get(self, request: Request, pk: int) -> Response:
        budget = generics.get_object_or_404(budgets_visible(user=request.user), pk=pk)
        status = budget_status(budget=budget)
        return Response(
            {
                "budget": budget.id,
                "period_start": status.period_start,
                "period_end": status.period_end,
                "amount_usd": plain_amount(budget.amount_usd),
                "spent_usd": plain_amount(status.spent_usd),
                "percent_used": round(float(status.percent_used), 2),
                "burn_usd_per_day": plain_amount(status.burn_usd_per_day.quantize(MICRO)),
                "projected_usd": None
                if status.projected_usd is None
                else plain_amount(status.projected_usd.quantize(MICRO)),
            }
        )


class RateLimitSerializer(serializers.ModelSerializer):
    project = VisibleRelated(slug_field="slug", queryset=Project.objects.all())
    api_key = VisibleRelated(
        slug_field="lookup_id", queryset=ApiKey.objects.all(), visible=keys_visible, required=False, allow_null=True
    )

    class Meta:
        model = RateLimit
        fields = ["id", "project", "api_key", "requests_per_minute", "tokens_per_minute", "max_concurrent"]
        read_only_fields = ["id"]
        validators: list[Any] = []  # the service upserts one row per (project, key)

    def create(self, validated: dict[str, Any]) -> RateLimit:
        _require(self, Action.PROJECT_MANAGE, validated["project"])
        try:
            return services.rate_limit_set(**validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None


class RateLimitList(generics.ListCreateAPIView):
    serializer_class = RateLimitSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.PROJECT_MANAGE)]

    def get_queryset(self) -> QuerySet[RateLimit]:
        return (
            RateLimit.objects.filter(project__in=projects_for(user=self.request.user))
            .select_related("project", "api_key")
            .order_by("id")
        )


class RateLimitDetail(generics.RetrieveDestroyAPIView):
    """``GET``/``DELETE /api/rate-limits/<id>/``; to change one's numbers, POST the list again (an upsert)."""

    serializer_class = RateLimitSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.PROJECT_MANAGE)]

    def get_queryset(self) -> QuerySet[RateLimit]:
        return RateLimitList.get_queryset(self)  # type: ignore[arg-type]

    def perform_destroy(self, instance: RateLimit) -> None:
        services.rate_limit_delete(limit=instance)


class ChannelSerializer(serializers.ModelSerializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True)
    has_secret = serializers.SerializerMethodField()

    class Meta:
        model = NotificationChannel
        fields = ["id", "organization", "name", "kind", "target", "secret", "has_secret", "is_active"]
        read_only_fields = ["id", "has_secret"]

    def get_has_secret(self, obj: NotificationChannel) -> bool:
        return bool(obj.secret_encrypted)

    def to_representation(self, obj: NotificationChannel) -> dict[str, Any]:
        data = super().to_representation(obj)
        data["target"] = shown(self.context["request"].user, obj.target, obj)  # a webhook URL works as a password
        return data

    def create(self, validated: dict[str, Any]) -> NotificationChannel:
        _require(self, Action.ORG_MANAGE, validated["organization"])
        validated.pop("is_active", None)
        try:
            return services.channel_create(**validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None


class ChannelList(generics.ListCreateAPIView):
    serializer_class = ChannelSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[NotificationChannel]:
        return channels_visible(user=self.request.user).order_by("id")


class ChannelUpdateSerializer(serializers.Serializer):
    """What a PATCH may change; a blank or missing ``secret`` keeps the stored one."""

    name = serializers.CharField(max_length=200, required=False)
    target = serializers.CharField(max_length=1000, required=False)
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


class ChannelDetail(generics.RetrieveUpdateDestroyAPIView):
    """``PATCH /api/channels/<id>/``: rename, re-target, re-key or pause a channel; ``DELETE`` removes it."""

    serializer_class = ChannelSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def perform_destroy(self, instance: NotificationChannel) -> None:
        services.channel_delete(channel=instance)

    def get_queryset(self) -> QuerySet[NotificationChannel]:
        return channels_visible(user=self.request.user)

    def patch(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        channel = self.get_object()
        payload = ChannelUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            services.channel_update(
                channel=channel,
                name=data.get("name", channel.name),
                target=data.get("target", channel.target),
                secret=data.get("secret") or None,
                is_active=data.get("is_active", channel.is_active),
            )
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None
        return Response(ChannelSerializer(channel, context={"request": request}).data)


class AlertSerializer(serializers.ModelSerializer):
    deliveries = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = [
            "id",
            "kind",
            "title",
            "message",
            "link",
            "project",
            "budget",
            "data",
            "created_at",
            "acknowledged_at",
            "acknowledged_by",
            "deliveries",
        ]
        read_only_fields = fields

    def get_deliveries(self, obj: Alert) -> list[dict[str, Any]]:
        return [{"channel": d.channel.name, "status": d.status, "attempts": d.attempts} for d in obj.deliveries.all()]


class AlertList(generics.ListAPIView):
    serializer_class = AlertSerializer

    def get_queryset(self) -> QuerySet[Alert]:
        return alerts_visible(user=self.request.user).prefetch_related("deliveries__channel").order_by("-created_at")


class AlertAcknowledgeView(APIView):
    """POST marks an alert seen, as the alerts page's button does: by whoever may manage its budget (owners;
    team leads for their team's). Acknowledging again keeps the first acknowledgement."""

    permission_classes = [permissions.IsAuthenticated, writes_need(Action.BUDGET_MANAGE)]

    @extend_schema(request=None, responses=AlertSerializer)
    def post(self, request: Request, pk: int) -> Response:
        alert = generics.get_object_or_404(alerts_visible(user=request.user), pk=pk)
        self.check_object_permissions(request, alert)
        alert = services.alert_acknowledge(alert=alert, user=request_user(request))
        return Response(AlertSerializer(alert, context={"request": request}).data)
