"""DRF API for the ledger, the spend series the overview charts, and the caller's own API token.

Querysets are scoped by ``projects_for``, so another tenant's row is a 404 (or absent from a list).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from apps.core.money import plain_amount
from apps.dashboard.auth import token_expires_at, token_scope
from apps.dashboard.models import TokenScope
from apps.dashboard.services import api_token_revoke, api_token_rotate
from apps.ledger.browse import PAGE_SIZE_MAX, InvalidCursor, LedgerCursor, LedgerPage, ledger_page
from apps.ledger.models import LedgerEntry
from apps.ledger.selectors import (
    BUCKETS,
    GROUP_BY_FIELDS,
    LedgerFilters,
    ledger_entries,
    ledger_percentiles,
    rollup_summary,
    savings_by_lever,
    spend_series,
)
from apps.tenancy.drf import request_user
from apps.tenancy.models import Project
from apps.tenancy.selectors import projects_for
from costcontrol.api import query_moment

_SINCE = OpenApiParameter("since", OpenApiTypes.DATETIME, description="ISO date or datetime (from)")
_UNTIL = OpenApiParameter("until", OpenApiTypes.DATETIME, description="ISO date (inclusive) or datetime")
_PROJECT = OpenApiParameter("project", str, description="Project slug")


class LedgerEntrySerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    key = serializers.CharField(source="api_key.lookup_id", default=None, read_only=True)
    savings = serializers.DecimalField(max_digits=18, decimal_places=8, read_only=True)

    class Meta:
        model = LedgerEntry
        fields = [
            "request_id", "created_at", "project", "key", "endpoint", "feature", "end_user",
            "requested_model", "served_model", "prompt_tokens", "cached_tokens", "completion_tokens",
            "reasoning_tokens", "service_tier", "usage_estimated", "possibly_billed", "cost", "counterfactual_cost",
            "savings", "latency_ms", "ttft_ms",
            "status_code", "error_code", "streamed", "cache_hit", "route",
        ]  # fmt: skip


LEDGER_API_PAGE_SIZE = 100


class LedgerCursorPagination(BasePagination):
    """Keyset pages of the ledger: ``next``/``previous`` links carry an opaque cursor, never an offset.

    No count: at a hundred million rows a count is the slow part. A cursor this server did not
    issue, or a ``limit`` outside 1–500, is a 400 in the API's error shape.
    """

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> list[LedgerEntry]:
        params = request.query_params
        cursor = None
        try:
            if params.get("cursor"):
                cursor = LedgerCursor.from_token(params["cursor"])
        except InvalidCursor:
            raise ApiValidationError({"cursor": ["Not a cursor this API issued; start without one."]}) from None
        limit = params.get("limit") or str(LEDGER_API_PAGE_SIZE)
        if not limit.isdigit() or not 1 <= int(limit) <= PAGE_SIZE_MAX:
            raise ApiValidationError({"limit": [f"A whole number from 1 to {PAGE_SIZE_MAX}."]})
        self.request = request
        self.page: LedgerPage = ledger_page(entries=queryset, cursor=cursor, size=int(limit))
        return self.page.rows

    def _link(self, cursor: LedgerCursor | None) -> str | None:
        if cursor is None:
            return None
        return self.request.build_absolute_uri(
            replace_query_param(self.request.get_full_path(), "cursor", cursor.token())
        )

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self._link(self.page.older), "previous": self._link(self.page.newer), "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {"type": "object", "properties": {"next": link, "previous": link, "results": schema}}

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Opaque: the next or previous link's cursor"},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_SIZE_MAX, "default": LEDGER_API_PAGE_SIZE}},
        ]  # fmt: skip


@extend_schema(
    parameters=[
        _PROJECT,
        OpenApiParameter("model", str),
        OpenApiParameter("feature", str),
        OpenApiParameter("user", str, description="End user"),
        OpenApiParameter("endpoint", str, description="chat.completions, responses, embeddings, batch.…"),
        _SINCE,
        _UNTIL,
    ]
)
class LedgerList(generics.ListAPIView):
    """Ledger rows newest first, a page per cursor (``next`` goes older, ``previous`` newer)."""

    serializer_class = LedgerEntrySerializer
    pagination_class = LedgerCursorPagination

    def get_queryset(self) -> QuerySet[LedgerEntry]:
        params = self.request.query_params
        filters = LedgerFilters(
            project=params.get("project", ""),
            model=params.get("model", ""),
            feature=params.get("feature", ""),
            end_user=params.get("user", ""),
            endpoint=params.get("endpoint", ""),
            since=query_moment(params.get("since"), name="since"),
            until=query_moment(params.get("until"), name="until", end_of_day=True),
        )
        return ledger_entries(user=self.request.user, filters=filters).select_related("project", "api_key")


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
    until = query_moment(params.get("until"), name="until", end_of_day=True)
    if until is None:
        until = dt.datetime.combine(timezone.localdate() + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    try:
        since = query_moment(params.get("since"), name="since") or until - SERIES_DEFAULT_RANGE
    except OverflowError:  # a week before the year 1
        raise ApiValidationError({"until": "Too early."}) from None
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


class _Window(serializers.Serializer):
    project = serializers.CharField(allow_null=True)
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()


class _Series(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    total = serializers.DecimalField(max_digits=30, decimal_places=12, coerce_to_string=True)
    values = serializers.ListField(child=serializers.DecimalField(max_digits=30, decimal_places=12))


class SpendSeriesSerializer(_Window):
    group_by = serializers.ChoiceField(choices=list(GROUP_BY_FIELDS))
    bucket = serializers.ChoiceField(choices=list(BUCKETS))
    buckets = serializers.ListField(child=serializers.DateTimeField())
    series = _Series(many=True)


class _Lever(serializers.Serializer):
    lever = serializers.CharField()
    requests = serializers.IntegerField()
    share = serializers.FloatField(allow_null=True)
    cost = serializers.DecimalField(max_digits=30, decimal_places=12)
    counterfactual_cost = serializers.DecimalField(max_digits=30, decimal_places=12)
    savings = serializers.DecimalField(max_digits=30, decimal_places=12)


class _Percentiles(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    mean = serializers.FloatField(allow_null=True)


class _Ttft(_Percentiles):
    count = serializers.IntegerField()


class SummarySerializer(_Window):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    cache_hits = serializers.IntegerField()
    cache_hit_rate = serializers.FloatField(allow_null=True)
    prompt_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=30, decimal_places=12)
    counterfactual_cost = serializers.DecimalField(max_digits=30, decimal_places=12)
    savings = serializers.DecimalField(max_digits=30, decimal_places=12)
    savings_by_lever = _Lever(many=True)
    streamed = serializers.IntegerField(help_text="Requests answered as a stream")
    latency_ms = _Percentiles()
    ttft_ms = _Ttft()


class SeriesSpend(APIView):
    """Spend per hour or day, one series per model, feature, key or end user (the biggest few, then "other")."""

    @extend_schema(
        parameters=[
            _PROJECT,
            _SINCE,
            _UNTIL,
            OpenApiParameter("group_by", str, enum=list(GROUP_BY_FIELDS)),
            OpenApiParameter("bucket", str, enum=list(BUCKETS)),
            OpenApiParameter("limit", int, description="Series before the rest is 'other' (1-50, default 8)"),
        ],
        responses=SpendSeriesSerializer,
    )
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
                    {
                        "key": g.key,
                        "label": g.label,
                        "total": plain_amount(g.total),
                        "values": [plain_amount(v) for v in g.values],
                    }
                    for g in series.groups
                ],
            }
        )


class SeriesSummary(APIView):
    """Totals, savings by lever, cache hit rate; latency and TTFT percentiles exact, from the gateway's ledger rows."""

    @extend_schema(parameters=[_PROJECT, _SINCE, _UNTIL], responses=SummarySerializer)
    def get(self, request: Request) -> Response:
        project, ids, since, until = _series_scope(request)
        summary = rollup_summary(project_ids=ids, since=since, until=until)
        latency = ledger_percentiles(project_ids=ids, since=since, until=until)
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
                "cost": plain_amount(summary.cost),
                "counterfactual_cost": plain_amount(summary.counterfactual_cost),
                "savings": plain_amount(sum((lever.savings for lever in levers), Decimal(0))),
                "savings_by_lever": [
                    {
                        "lever": lever.lever,
                        "requests": lever.requests,
                        "share": _rate(lever.share),
                        "cost": plain_amount(lever.cost),
                        "counterfactual_cost": plain_amount(lever.counterfactual_cost),
                        "savings": plain_amount(lever.savings),
                    }
                    for lever in levers
                ],
                "streamed": summary.streamed_count,
                "latency_ms": {
                    "p50": _ms(latency.latency_p50_ms),
                    "p95": _ms(latency.latency_p95_ms),
                    "mean": _ms(summary.latency_mean_ms),
                },
                "ttft_ms": {
                    "p50": _ms(latency.ttft_p50_ms),
                    "p95": _ms(latency.ttft_p95_ms),
                    "mean": _ms(summary.ttft_mean_ms),
                    "count": summary.ttft_count,
                },
            }
        )


# The caller's API token -------------------------------------------------------------------------------


class TokenStateSerializer(serializers.Serializer):
    prefix = serializers.CharField(help_text="The token's first characters")
    scope = serializers.ChoiceField(choices=TokenScope.choices)
    created = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class NewTokenSerializer(TokenStateSerializer):
    key = serializers.CharField(help_text="The token itself: shown in this answer only")


class TokenRequestSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=TokenScope.choices)
    lifetime_days = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Default and most: API_TOKEN_LIFETIME_DAYS"
    )


def _token_state(token: Token) -> dict[str, Any]:
    return {
        "prefix": token.key[:6],
        "scope": token_scope(token),
        "created": token.created,
        "expires_at": token_expires_at(token),
    }


class AccountToken(APIView):
    """The caller's own API token: read its state, make a new one (replacing it), or revoke it."""

    @extend_schema(responses=TokenStateSerializer)
    def get(self, request: Request) -> Response:
        token = generics.get_object_or_404(Token.objects.select_related("grant"), user=request_user(request))
        return Response(TokenStateSerializer(_token_state(token)).data)

    @extend_schema(request=TokenRequestSerializer, responses={201: NewTokenSerializer})
    def post(self, request: Request) -> Response:
        """A new token with this scope; the one in use stops working at once (a read token cannot do this)."""
        payload = TokenRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        days = payload.validated_data.get("lifetime_days")
        if days is not None and days > settings.API_TOKEN_LIFETIME_DAYS:
            raise ApiValidationError({"lifetime_days": f"At most {settings.API_TOKEN_LIFETIME_DAYS}."})
        token = api_token_rotate(user=request_user(request), scope=payload.validated_data["scope"], lifetime_days=days)
        body = NewTokenSerializer({**_token_state(token), "key": token.key}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(responses={204: None})
    def delete(self, request: Request) -> Response:
        api_token_revoke(user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
