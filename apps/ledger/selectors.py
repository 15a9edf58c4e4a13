"""Reads of the ledger for pages, the API and exports; every read is scoped by the caller's projects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from apps.ledger.models import HourlyRollup, LedgerEntry
from apps.tenancy.selectors import projects_for


@dataclass(frozen=True)
class ProjectSpend:
    today: Decimal = Decimal(0)
    month: Decimal = Decimal(0)


def spend_by_project(*, project_ids: Iterable[int], now: dt.datetime | None = None) -> dict[int, ProjectSpend]:
    """Today's and this month's spend (UTC) per project, from the hourly roll-ups, in one query."""
    ids = list(project_ids)
    if not ids:
        return {}
    now = timezone.localtime(now or timezone.now(), dt.UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    rows = (
        HourlyRollup.objects.filter(project_id__in=ids, hour__gte=month_start)
        .values("project_id")
        .annotate(month=Sum("cost"), today=Sum("cost", filter=Q(hour__gte=day_start)))
    )
    return {
        row["project_id"]: ProjectSpend(today=row["today"] or Decimal(0), month=row["month"] or Decimal(0))
        for row in rows
    }


@dataclass(frozen=True)
class LedgerFilters:
    """What a person narrowed the ledger to; empty values do not filter."""

    project: str = ""  # project slug
    key: str = ""  # key lookup id, with or without the cc_live_ prefix
    model: str = ""  # matches the requested or the served model
    feature: str = ""
    end_user: str = ""
    status: str = ""  # "ok" or "error"
    since: dt.datetime | None = None
    until: dt.datetime | None = None  # exclusive


def ledger_entries(*, user: User | AnonymousUser, filters: LedgerFilters | None = None) -> QuerySet[LedgerEntry]:
    """Ledger rows of the projects ``user`` sees, newest first, narrowed by ``filters``."""
    filters = filters or LedgerFilters()
    rows = LedgerEntry.objects.filter(project__in=projects_for(user=user).values("pk"))
    if filters.project:
        rows = rows.filter(project__slug=filters.project)
    if filters.key:
        rows = rows.filter(api_key__lookup_id=filters.key.removeprefix("cc_live_").rstrip("…"))
    if filters.model:
        rows = rows.filter(Q(requested_model=filters.model) | Q(served_model=filters.model))
    if filters.feature:
        rows = rows.filter(feature=filters.feature)
    if filters.end_user:
        rows = rows.filter(end_user=filters.end_user)
    if filters.status == "ok":
        rows = rows.filter(status_code__lt=400)
    elif filters.status == "error":
        rows = rows.filter(status_code__gte=400)
    if filters.since is not None:
        rows = rows.filter(created_at__gte=filters.since)
    if filters.until is not None:
        rows = rows.filter(created_at__lt=filters.until)
    return rows.order_by("-created_at", "-id")


@dataclass(frozen=True)
class LedgerTotals:
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: Decimal
    saved: Decimal

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def ledger_totals(*, entries: QuerySet[LedgerEntry]) -> LedgerTotals:
    """Totals of ``entries`` in one aggregate query."""
    # Aliases differ from field names: Django refuses an aggregate that shadows a column it sums.
    totals = entries.order_by().aggregate(
        total_requests=Count("id"),
        total_prompt=Sum("prompt_tokens"),
        total_cached=Sum("cached_tokens"),
        total_completion=Sum("completion_tokens"),
        total_cost=Sum("cost"),
        total_saved=Sum(F("counterfactual_cost") - F("cost")),
    )
    return LedgerTotals(
        requests=totals["total_requests"],
        prompt_tokens=totals["total_prompt"] or 0,
        cached_tokens=totals["total_cached"] or 0,
        completion_tokens=totals["total_completion"] or 0,
        cost=totals["total_cost"] or Decimal(0),
        saved=totals["total_saved"] or Decimal(0),
    )


LEDGER_EXPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "request_id"),
    ("created_at", "created_at"),
    ("project", "project__slug"),
    ("key", "api_key__lookup_id"),
    ("endpoint", "endpoint"),
    ("feature", "feature"),
    ("end_user", "end_user"),
    ("requested_model", "requested_model"),
    ("served_model", "served_model"),
    ("prompt_tokens", "prompt_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("cost_usd", "cost"),
    ("counterfactual_cost_usd", "counterfactual_cost"),
    ("latency_ms", "latency_ms"),
    ("ttft_ms", "ttft_ms"),
    ("status_code", "status_code"),
    ("cache_hit", "cache_hit"),
    ("route", "route"),
)


def ledger_export_rows(*, entries: QuerySet[LedgerEntry], chunk_size: int = 2000) -> Iterator[tuple[Any, ...]]:
    """A header, then one tuple per row, read in chunks so an export never holds the whole ledger."""
    yield tuple(name for name, _ in LEDGER_EXPORT_COLUMNS)
    fields = [field for _, field in LEDGER_EXPORT_COLUMNS]
    yield from entries.values_list(*fields).iterator(chunk_size=chunk_size)
