"""DRF API for projects, keys, the ledger, spend series, providers and prices.

Querysets are scoped by ``projects_for`` / organisation membership, so another
tenant's row is a 404. Finance may read everything of its organisation but
never write (403). Writes go through services.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.keys.models import ApiKey
from apps.keys.services import key_issue, key_revoke
from apps.ledger.models import LedgerEntry
from apps.ledger.selectors import (
    BUCKETS,
    GROUP_BY_FIELDS,
    LedgerFilters,
    ledger_entries,
    rollup_summary,
    savings_by_lever,
    spend_series,
)
from apps.providers.models import Price, Provider
from apps.providers.selectors import prices_for, providers_for
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, require, shown
from apps.tenancy.selectors import projects_for
from costcontrol.forms import service_error_detail


def key_status(api_key: ApiKey) -> str:
    if api_key.revoked_at is not None:
        return "revoked"
    return "active" if api_key.is_active else "expired"


class ProjectSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    default_provider = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Project
        fields = ["slug", "name", "organization", "team", "default_provider", "created_at"]


class KeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    status = serializers.SerializerMethodField()
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "lookup_id", "prefix", "name", "project", "allowed_models", "default_feature",
            "expires_at", "revoked_at", "created_at", "status",
        ]  # fmt: skip
        read_only_fields = fields

    def get_status(self, obj: ApiKey) -> str:
        return key_status(obj)


class KeyIssueSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)
    default_feature = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


class LedgerEntrySerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    key = serializers.CharField(source="api_key.lookup_id", default=None, read_only=True)
    savings = serializers.DecimalField(max_digits=18, decimal_places=8, read_only=True)

    class Meta:
        model = LedgerEntry
        fields = [
            "request_id", "created_at", "project", "key", "endpoint", "feature", "end_user",
            "requested_model", "served_model", "prompt_tokens", "cached_tokens", "completion_tokens",
            "usage_estimated", "possibly_billed", "cost", "counterfactual_cost", "savings", "latency_ms", "ttft_ms",
            "status_code", "error_code", "streamed", "cache_hit", "route",
        ]  # fmt: skip


class ProviderSerializer(serializers.ModelSerializer):
    """Never the secret: only whether one is stored. The base URL is masked for all but owners."""

    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    base_url = serializers.SerializerMethodField()

    class Meta:
        model = Provider
        fields = ["id", "organization", "name", "kind", "base_url", "is_active", "has_secret", "created_at"]

    def get_base_url(self, obj: Provider) -> str:
        return shown(self.context["request"].user, obj.base_url, obj)


class PriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Price
        fields = [
            "id", "provider", "model", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok",
            "batch_input_per_mtok", "batch_output_per_mtok", "effective_from", "created_at",
        ]  # fmt: skip


class ProjectList(generics.ListAPIView):
    serializer_class = ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for(user=self.request.user)


class ProjectDetail(generics.RetrieveAPIView):
    serializer_class = ProjectSerializer
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for(user=self.request.user)


class ProjectKeys(generics.ListAPIView):
    """List a project's keys; POST issues one and returns its plaintext, this once."""

    serializer_class = KeySerializer

    def project(self) -> Project:
        return generics.get_object_or_404(projects_for(user=self.request.user), slug=self.kwargs["slug"])

    def get_queryset(self) -> QuerySet[ApiKey]:
        return self.project().api_keys.select_related("project").order_by("-created_at")

    def post(self, request: Request, slug: str) -> Response:
        project = self.project()
        require(request.user, Action.KEY_ISSUE, project)
        payload = KeyIssueSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            issued = key_issue(project=project, created_by=request.user, **payload.validated_data)
        except DjangoValidationError as exc:
            raise ApiValidationError(service_error_detail(exc)) from None
        body = {**KeySerializer(issued.api_key).data, "key": issued.plaintext}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


class KeyRevoke(APIView):
    def post(self, request: Request, lookup_id: str) -> Response:
        api_key = generics.get_object_or_404(
            ApiKey.objects.filter(project__in=projects_for(user=request.user).values("pk")).select_related("project"),
            lookup_id=lookup_id,
        )
        require(request.user, Action.KEY_REVOKE, api_key)
        key_revoke(api_key=api_key)
        return Response(KeySerializer(api_key).data)


def _moment(value: str | None, *, name: str, end_of_day: bool = False) -> dt.datetime | None:
    """An ISO datetime, or a date meaning its midnight (the next one for ``until``)."""
    if not value:
        return None
    try:
        # parse_datetime would read a bare date as its midnight, losing "until the end of that day".
        day = parse_date(value)
        moment = None if day is not None else parse_datetime(value)
    except ValueError:
        day = moment = None
    if day is not None:
        moment = dt.datetime.combine(day + dt.timedelta(days=1 if end_of_day else 0), dt.time.min)
    if moment is None:
        raise ApiValidationError({name: "Use an ISO date or datetime."})
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class LedgerList(generics.ListAPIView):
    serializer_class = LedgerEntrySerializer

    def get_queryset(self) -> QuerySet[LedgerEntry]:
        params = self.request.query_params
        filters = LedgerFilters(
            project=params.get("project", ""),
            model=params.get("model", ""),
            feature=params.get("feature", ""),
            end_user=params.get("user", ""),
            since=_moment(params.get("since"), name="since"),
            until=_moment(params.get("until"), name="until", end_of_day=True),
        )
        return ledger_entries(user=self.request.user, filters=filters).select_related("project", "api_key")


class ProviderList(generics.ListAPIView):
    serializer_class = ProviderSerializer

    def get_queryset(self) -> QuerySet[Provider]:
        return providers_for(user=self.request.user)


class PriceList(generics.ListAPIView):
    serializer_class = PriceSerializer

    def get_queryset(self) -> QuerySet[Price]:
        prices = prices_for(user=self.request.user)
        provider = self.request.query_params.get("provider")
        if provider:
            if not provider.isdigit():
                raise ApiValidationError({"provider": "Give the provider's numeric id."})
            prices = prices.filter(provider_id=int(provider))
        return prices


# Series: what the overview charts, for scripts. Read from the hourly roll-ups only.

SERIES_DEFAULT_RANGE = dt.timedelta(days=7)
SERIES_MAX_HOURLY_RANGE = dt.timedelta(days=31)
SERIES_MAX_RANGE = dt.timedelta(days=366)


def _series_scope(request: Request) -> tuple[Project | None, list[int], dt.datetime, dt.datetime]:
    """The project (404 unless visible; all visible ones when absent) and the [since, until) window."""
    params = request.query_params
    visible = projects_for(user=request.user)
    project = None
    if params.get("project"):
        project = generics.get_object_or_404(visible, slug=params["project"])
        ids = [project.pk]
    else:
        ids = list(visible.values_list("pk", flat=True))
    until = _moment(params.get("until"), name="until", end_of_day=True)
    if until is None:
        until = dt.datetime.combine(timezone.localdate() + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    since = _moment(params.get("since"), name="since") or until - SERIES_DEFAULT_RANGE
    if since >= until:
        raise ApiValidationError({"until": "Must be after since."})
    if until - since > SERIES_MAX_RANGE:
        raise ApiValidationError({"since": f"Ask for at most {SERIES_MAX_RANGE.days} days at a time."})
    return project, ids, since, until


def _choice(request: Request, name: str, choices: Any, default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in choices:
        raise ApiValidationError({name: f"One of: {', '.join(choices)}."})
    return value


def _window(project: Project | None, since: dt.datetime, until: dt.datetime) -> dict[str, Any]:
    return {"project": project.slug if project else None, "since": since, "until": until}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class SeriesSpend(APIView):
    """Spend per hour or day, one series per model, feature, key or end user (the biggest few, then "other")."""

    def get(self, request: Request) -> Response:
        project, ids, since, until = _series_scope(request)
        group_by = _choice(request, "group_by", list(GROUP_BY_FIELDS), "model")
        default_bucket = "hour" if until - since <= dt.timedelta(days=2) else "day"
        bucket = _choice(request, "bucket", BUCKETS, default_bucket)
        if bucket == "hour" and until - since > SERIES_MAX_HOURLY_RANGE:
            raise ApiValidationError({"bucket": f"Hourly series cover at most {SERIES_MAX_HOURLY_RANGE.days} days."})
        limit = request.query_params.get("limit", "8")
        if not limit.isdigit() or not 1 <= int(limit) <= 50:
            raise ApiValidationError({"limit": "A number from 1 to 50."})
        series = spend_series(
            project_ids=ids, since=since, until=until, group_by=group_by, bucket=bucket, limit=int(limit)
        )
        return Response(
            {
                **_window(project, since, until),
                "group_by": group_by,
                "bucket": bucket,
                "buckets": series.starts,
                "series": [
                    {"key": g.key, "label": g.label, "total": str(g.total), "values": [str(v) for v in g.values]}
                    for g in series.groups
                ],
            }
        )


class SeriesSummary(APIView):
    """Totals, savings by lever, latency and TTFT percentiles (estimated from histograms), cache hit rate."""

    def get(self, request: Request) -> Response:
        project, ids, since, until = _series_scope(request)
        summary = rollup_summary(project_ids=ids, since=since, until=until)
        levers = savings_by_lever(project_ids=ids, since=since, until=until)
        return Response(
            {
                **_window(project, since, until),
                "requests": summary.requests,
                "errors": summary.errors,
                "cache_hits": summary.cache_hits,
                "cache_hit_rate": _rate(summary.cache_hit_rate),
                "prompt_tokens": summary.prompt_tokens,
                "cached_tokens": summary.cached_tokens,
                "completion_tokens": summary.completion_tokens,
                "cost": str(summary.cost),
                "counterfactual_cost": str(summary.counterfactual_cost),
                "savings": str(sum((lever.savings for lever in levers), Decimal(0))),
                "savings_by_lever": [
                    {
                        "lever": lever.lever,
                        "requests": lever.requests,
                        "share": _rate(lever.share),
                        "cost": str(lever.cost),
                        "counterfactual_cost": str(lever.counterfactual_cost),
                        "savings": str(lever.savings),
                    }
                    for lever in levers
                ],
                "latency_ms": {
                    "p50": _ms(summary.latency_p50_ms),
                    "p95": _ms(summary.latency_p95_ms),
                    "mean": _ms(summary.latency_mean_ms),
                },
                "ttft_ms": {
                    "p50": _ms(summary.ttft_p50_ms),
                    "p95": _ms(summary.ttft_p95_ms),
                    "mean": _ms(summary.ttft_mean_ms),
                    "count": summary.ttft_count,
                },
            }
        )
