"""DRF API for self-hosted deployments (register, start, stop: the organisation's owners; everyone in it
reads them) and the break-even comparison as JSON, with the same assumptions as the page's form."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.deployments.breakeven import BreakEvenRow
from apps.deployments.forms import DEPLOYMENT_FIELDS
from apps.deployments.models import Deployment
from apps.deployments.services import (
    DeploymentStateError,
    deployment_create,
    deployment_request_start,
    deployment_request_stop,
)
from apps.deployments.views import break_even_for
from apps.tenancy.drf import VisibleRelated, writes_need
from apps.tenancy.models import Organization
from apps.tenancy.permissions import Action, require
from apps.tenancy.selectors import organizations_for, projects_for
from costcontrol.api import ErrorSerializer, form_errors


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is not in a state that allows this."
    default_code = "conflict"


class DeploymentSerializer(serializers.ModelSerializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())

    class Meta:
        model = Deployment
        fields = ["id", "organization", *DEPLOYMENT_FIELDS, "status", "base_url", "provider", "last_error",
                  "started_at", "stopped_at", "created_at"]  # fmt: skip
        read_only_fields = ["id", "status", "base_url", "provider", "last_error", "started_at", "stopped_at",
                            "created_at"]  # fmt: skip
        validators: list[Any] = []  # names and ports unique per organisation: the service's full_clean says so

    def create(self, validated: dict[str, Any]) -> Deployment:
        require(self.context["request"].user, Action.ORG_MANAGE, validated["organization"])
        return deployment_create(**validated)


def _deployments(request: Request) -> QuerySet[Deployment]:
    return Deployment.objects.filter(organization__in=organizations_for(user=request.user)).order_by("id")


class DeploymentList(generics.ListCreateAPIView):
    """The deployments of the caller's organisations; ``POST`` registers one (owners). Starting is separate."""

    serializer_class = DeploymentSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[Deployment]:
        return _deployments(self.request)


class DeploymentDetail(generics.RetrieveAPIView):
    serializer_class = DeploymentSerializer

    def get_queryset(self) -> QuerySet[Deployment]:
        return _deployments(self.request)


class DeploymentAction(APIView):
    """``POST …/start/`` or ``…/stop/``: the status changes at once (202), a GPU worker does the rest."""

    action = "start"

    @extend_schema(request=None, responses={202: DeploymentSerializer, 409: ErrorSerializer})
    def post(self, request: Request, pk: int) -> Response:
        deployment = generics.get_object_or_404(_deployments(request), pk=pk)
        require(request.user, Action.ORG_MANAGE, deployment)
        service = deployment_request_start if self.action == "start" else deployment_request_stop
        try:
            service(deployment=deployment)
        except DeploymentStateError as exc:
            raise Conflict(f"Cannot {self.action}: {exc}.") from None
        body = DeploymentSerializer(deployment, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


def _money(value: Decimal) -> str:
    return f"{value:.6f}"


def _row(row: BreakEvenRow) -> dict[str, Any]:
    return {
        "model": row.model,
        "requests": row.requests,
        "monthly_output_tokens": int(row.monthly_output_tokens),
        "monthly_tokens": int(row.monthly_tokens),
        "api_monthly_usd": _money(row.api_monthly_usd),
        "replicas": row.replicas,
        "self_hosted_monthly_usd": _money(row.self_hosted_monthly_usd),
        "monthly_saving_usd": _money(row.monthly_saving_usd),
        "crossover_output_tokens": None if row.crossover_output_tokens is None else int(row.crossover_output_tokens),
        "crossover_tokens": None if row.crossover_tokens is None else int(row.crossover_tokens),
    }


class _Row(serializers.Serializer):
    model = serializers.CharField()
    requests = serializers.IntegerField()
    monthly_output_tokens = serializers.IntegerField()
    monthly_tokens = serializers.IntegerField()
    api_monthly_usd = serializers.DecimalField(max_digits=30, decimal_places=6)
    replicas = serializers.IntegerField()
    self_hosted_monthly_usd = serializers.DecimalField(max_digits=30, decimal_places=6)
    monthly_saving_usd = serializers.DecimalField(max_digits=30, decimal_places=6)
    crossover_output_tokens = serializers.IntegerField(allow_null=True)
    crossover_tokens = serializers.IntegerField(allow_null=True)


class _Assumptions(serializers.Serializer):
    days = serializers.IntegerField()
    deployment = serializers.CharField(allow_null=True)
    hourly_cost_usd = serializers.DecimalField(max_digits=30, decimal_places=6)
    throughput_tokens_per_s = serializers.DecimalField(max_digits=30, decimal_places=6)
    utilisation_percent = serializers.DecimalField(max_digits=30, decimal_places=6)
    hours_per_month = serializers.IntegerField()
    replica_monthly_usd = serializers.DecimalField(max_digits=30, decimal_places=6)
    replica_monthly_output_tokens = serializers.IntegerField()


class BreakEvenSerializer(serializers.Serializer):
    project = serializers.CharField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    assumptions = _Assumptions()
    models = _Row(many=True)
    total = _Row(allow_null=True)
    verdict = serializers.CharField()


class BreakEvenView(APIView):
    """``GET /api/projects/<slug>/break-even/``: query parameters as the page's form."""

    @extend_schema(
        parameters=[
            OpenApiParameter("days", int, description="Window of roll-ups to read"),
            OpenApiParameter("deployment", int, description="A deployment's id (its cost and throughput)"),
            OpenApiParameter("hourly_cost_usd", OpenApiTypes.DECIMAL),
            OpenApiParameter("throughput_tokens_per_s", OpenApiTypes.DECIMAL),
            OpenApiParameter("utilisation_percent", OpenApiTypes.DECIMAL),
        ],
        responses=BreakEvenSerializer,
    )
    def get(self, request: Request, slug: str) -> Response:
        project = generics.get_object_or_404(projects_for(user=request.user), slug=slug)
        form, result, window = break_even_for(project=project, params=request.query_params)
        if result is None:
            raise form_errors(form)
        a = result.assumptions
        return Response(
            {
                "project": project.slug,
                "since": window["since"],
                "until": window["until"],
                "assumptions": {
                    "days": a.days,
                    "deployment": a.deployment_name or None,
                    "hourly_cost_usd": str(a.hourly_cost_usd),
                    "throughput_tokens_per_s": str(a.throughput_tokens_per_s),
                    "utilisation_percent": str(a.utilisation_percent),
                    "hours_per_month": 730,
                    "replica_monthly_usd": _money(a.replica_monthly_usd),
                    "replica_monthly_output_tokens": int(a.replica_monthly_tokens),
                },
                "models": [_row(row) for row in result.rows],
                "total": _row(result.total) if result.total else None,
                "verdict": result.verdict,
            }
        )
