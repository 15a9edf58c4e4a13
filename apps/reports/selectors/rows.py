"""The rows of the ledger and roll-up CSV exports, read in chunks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.db.models import Aggregate, Count, Q, QuerySet, Sum
from django.db.models.functions import Trunc

from apps.ledger.models import HourlyRollup, LedgerEntry
from apps.ledger.selectors import ledger_export_rows
from apps.tenancy.models import Organization, Project

ZERO = Decimal(0)


EXPORT_CHUNK_SIZE = 2000


def ledger_range(
    *, organization: Organization, projects: QuerySet[Project], since: dt.datetime, until: dt.datetime
) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(
        organization=organization, project__in=projects.values("pk"), created_at__gte=since, created_at__lt=until
    )


def ledger_csv_rows(
    *, entries: QuerySet[LedgerEntry], chunk_size: int = EXPORT_CHUNK_SIZE
) -> Iterator[tuple[Any, ...]]:
    """A header, then one tuple per ledger row, oldest first, read in chunks."""
    return ledger_export_rows(entries=entries.order_by("created_at", "id"), chunk_size=chunk_size)


GROUPINGS = ("project", "model", "feature", "key", "end_user", "endpoint")


BUCKETS = ("hour", "day", "month")


_ROLLUP_FIELDS = {
    "project": "project__slug",
    "model": "served_model",
    "feature": "feature",
    "key": "api_key__lookup_id",
    "endpoint": "endpoint",
}


_LEDGER_FIELDS = {**_ROLLUP_FIELDS, "end_user": "end_user"}


ROLLUP_MEASURES = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "counterfactual_cost_usd",
    "savings_usd",
)


def rollup_groups(
    *,
    organization: Organization,
    projects: QuerySet[Project],
    since: dt.datetime,
    until: dt.datetime,
    group_by: list[str],
    bucket: str,
) -> QuerySet[Any]:
    """Totals per time bucket and ``group_by`` slice.

    Read from the hourly roll-ups, except when grouping by end user: roll-ups
    do not keep end users, so that grouping aggregates the ledger itself.
    """
    if "end_user" in group_by:
        source: QuerySet[Any] = ledger_range(organization=organization, projects=projects, since=since, until=until)
        time_field, fields = "created_at", _LEDGER_FIELDS
        measures: dict[str, Aggregate] = {
            "m_requests": Sum("request_count"),
            "m_errors": Count("id", filter=Q(status_code__gte=400)),
            "m_cache_hits": Count("id", filter=~Q(cache_hit="")),
        }
    else:
        source = HourlyRollup.objects.filter(
            organization=organization, project__in=projects.values("pk"), hour__gte=since, hour__lt=until
        )
        time_field, fields = "hour", _ROLLUP_FIELDS
        measures = {"m_requests": Sum("requests"), "m_errors": Sum("errors"), "m_cache_hits": Sum("cache_hits")}
    columns = [fields[name] for name in group_by]
    return (
        source.annotate(bucket_start=Trunc(time_field, bucket, tzinfo=dt.UTC))
        .values("bucket_start", *columns)
        .annotate(
            **measures,
            m_prompt=Sum("prompt_tokens"),
            m_cached=Sum("cached_tokens"),
            m_completion=Sum("completion_tokens"),
            m_cost=Sum("cost"),
            m_counterfactual=Sum("counterfactual_cost"),
        )
        .order_by("bucket_start", *columns)
    )


def rollup_csv_rows(
    *, groups: QuerySet[Any], group_by: list[str], chunk_size: int = EXPORT_CHUNK_SIZE
) -> Iterator[tuple[Any, ...]]:
    yield ("bucket_start", *group_by, *ROLLUP_MEASURES)
    fields = _LEDGER_FIELDS
    for row in groups.iterator(chunk_size=chunk_size):
        cost, counterfactual = row["m_cost"] or ZERO, row["m_counterfactual"] or ZERO
        yield (
            row["bucket_start"].isoformat(),
            *(row[fields[name]] if row[fields[name]] is not None else "" for name in group_by),
            row["m_requests"] or 0,
            row["m_errors"] or 0,
            row["m_cache_hits"] or 0,
            row["m_prompt"] or 0,
            row["m_cached"] or 0,
            row["m_completion"] or 0,
            cost,
            counterfactual,
            counterfactual - cost,
        )
