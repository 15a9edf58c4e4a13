"""DRF API: what each saving lever would have saved on a project's ledger, machine-readable.

``GET /api/projects/<slug>/opportunities/?days=7&ttl=3600`` lists them, biggest first, each with a
stable id, the predicted saving in USD and as a share of its feature's spend, and the evidence.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.opportunities.selectors import project_opportunities
from apps.tenancy.permissions import Action, require
from apps.tenancy.selectors import projects_for

MAX_DAYS = 90
MAX_TTL_SECONDS = 30 * 86_400


class WindowSerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=MAX_DAYS, default=7)
    ttl = serializers.IntegerField(min_value=1, max_value=MAX_TTL_SECONDS, default=3600)


class OpportunitySerializer(serializers.Serializer):
    id = serializers.CharField(help_text="Stable for the same lever, feature and detail")
    lever = serializers.ChoiceField(
        choices=["exact_cache", "semantic_cache", "route", "cascade", "batch", "prompt_cache"]
    )
    feature = serializers.CharField(allow_blank=True)
    predicted_savings_usd = serializers.DecimalField(max_digits=24, decimal_places=6)
    share = serializers.FloatField(help_text="Of the feature's spend in the window")
    evidence = serializers.DictField(help_text="The counts and sums the prediction rests on")


class FeatureProfileSerializer(serializers.Serializer):
    feature = serializers.CharField(allow_blank=True)
    requests = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=24, decimal_places=6)
    prompt_tokens = serializers.IntegerField()
    static_prefix_share = serializers.FloatField()
    streamed_requests = serializers.IntegerField()
    completion_tokens_p99 = serializers.FloatField(allow_null=True)
    max_tokens_p50 = serializers.FloatField(allow_null=True)
    suggested_max_tokens = serializers.IntegerField(allow_null=True)
    turns_avg = serializers.FloatField()
    turns_max = serializers.IntegerField()
    near_duplicates = serializers.DictField(
        allow_null=True,
        help_text="Of a sample of requests with a stored embedding, the share with an earlier near duplicate, "
        "per similarity threshold (null: no semantic-cache traffic)",
    )


class ReportSerializer(serializers.Serializer):
    project = serializers.CharField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    ttl_seconds = serializers.IntegerField()
    opportunities = OpportunitySerializer(many=True)
    features = FeatureProfileSerializer(many=True)


class OpportunityList(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("days", int, description=f"Days of ledger to read, 1 to {MAX_DAYS} (default 7)"),
            OpenApiParameter("ttl", int, description="Exact-cache TTL to replay, in seconds (default 3600)"),
        ],
        responses=ReportSerializer,
    )
    def get(self, request: Request, slug: str) -> Response:
        project = generics.get_object_or_404(projects_for(user=request.user), slug=slug)
        require(request.user, Action.OPPORTUNITY_VIEW, project)
        window = WindowSerializer(data=request.query_params)
        window.is_valid(raise_exception=True)
        report = project_opportunities(
            project=project, days=window.validated_data["days"], ttl_seconds=window.validated_data["ttl"]
        )
        return Response({"project": project.slug, **report.as_json()})
