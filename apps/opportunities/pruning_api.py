"""DRF API: the pruning policies of a project's features, beside what the report suggests for each.

``GET /api/projects/<slug>/pruning/`` lists the policies and, per feature seen in the last week, the
output cap sized from use (``suggested_max_tokens``: completion tokens' p99 and a quarter more) and how
long conversations get. ``POST`` turns a feature's pruning on or off (one body per feature; fields left
out keep their value): owners, and leads of the project's team (``prune.manage``).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.events import FEATURE_MAX
from apps.core.request import MAX_TOKENS_BOUND
from apps.opportunities.selectors import pruning_suggestions
from apps.routing.models import HISTORY_TURNS_MAX, HISTORY_TURNS_MIN, PrunePolicy
from apps.routing.services import prune_policy_save
from apps.tenancy.permissions import Action, require
from apps.tenancy.selectors import projects_for
from costcontrol.forms import service_error_detail


class PrunePolicySerializer(serializers.Serializer):
    feature = serializers.CharField(max_length=FEATURE_MAX, allow_blank=True, help_text="Blank: the whole project")
    cap_enabled = serializers.BooleanField(required=False)
    max_tokens_cap = serializers.IntegerField(min_value=1, max_value=MAX_TOKENS_BOUND, required=False)
    history_enabled = serializers.BooleanField(required=False)
    history_turns = serializers.IntegerField(min_value=HISTORY_TURNS_MIN, max_value=HISTORY_TURNS_MAX, required=False)


class SuggestionSerializer(serializers.Serializer):
    feature = serializers.CharField(allow_blank=True)
    requests = serializers.IntegerField()
    completion_tokens_p99 = serializers.FloatField(allow_null=True)
    max_tokens_p50 = serializers.FloatField(allow_null=True)
    suggested_max_tokens = serializers.IntegerField(allow_null=True)
    turns_avg = serializers.FloatField()
    turns_max = serializers.IntegerField()


class PruningSerializer(serializers.Serializer):
    project = serializers.CharField()
    policies = PrunePolicySerializer(many=True)
    suggestions = SuggestionSerializer(many=True)


def policy_json(policy: PrunePolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in PrunePolicySerializer().fields}


class PruningPolicies(APIView):
    @extend_schema(responses=PruningSerializer)
    def get(self, request: Request, slug: str) -> Response:
        project = generics.get_object_or_404(projects_for(user=request.user), slug=slug)
        require(request.user, Action.OPPORTUNITY_VIEW, project)
        policies = PrunePolicy.objects.filter(project=project).order_by("feature")
        return Response(
            {
                "project": project.slug,
                "policies": [policy_json(p) for p in policies],
                "suggestions": pruning_suggestions(project=project),
            }
        )

    @extend_schema(request=PrunePolicySerializer, responses=PrunePolicySerializer)
    def post(self, request: Request, slug: str) -> Response:
        project = generics.get_object_or_404(projects_for(user=request.user), slug=slug)
        require(request.user, Action.PRUNE_MANAGE, project)
        body = PrunePolicySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        changes = dict(body.validated_data)
        feature = changes.pop("feature")
        try:
            policy = prune_policy_save(project=project, feature=feature, changes=changes)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None
        return Response(policy_json(policy))
