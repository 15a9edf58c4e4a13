"""Reads of the ledger for pages, the API and exports; every read is scoped by the caller's projects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Aggregate, Count, F, FloatField, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Trunc
from django.utils import timezone

from apps.ledger.models import (
    HISTOGRAM_EDGES_MS,
    UNKNOWN_LABEL,
    BackgroundResponse,
    Dimension,
    LedgerEntry,
    Lever,
    ProjectHourlyRollup,
    RollupWatermark,
    SliceHourlyRollup,
    Source,
)
from apps.tenancy.selectors import projects_for


@dataclass(frozen=True)
class ProjectSpend:
    today: Decimal = Decimal(0)
    month: Decimal = Decimal(0)


def spend_by_project(*, project_ids: Iterable[int], now: dt.datetime | None = None) -> dict[int, ProjectSpend]:
    """Today's and this month's spend (UTC) per project, from the project roll-ups, in one query."""
    ids = list(project_ids)
    if not ids:
        return {}
    now = timezone.localtime(now or timezone.now(), dt.UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    rows = (
        ProjectHourlyRollup.objects.filter(project_id__in=ids, hour__gte=month_start)
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
    key: str = ""  # key name, or lookup id with or without the cc_live_ prefix
    model: str = ""  # matches the requested or the served model
    feature: str = ""
    end_user: str = ""
    endpoint: str = ""  # chat.completions, responses, embeddings, completions, batch.<endpoint>
    status: str = ""  # "ok" or "error"
    since: dt.datetime | None = None
    until: dt.datetime | None = None  # exclusive


def key_matches(key: str, *, prefix: str = "") -> Q:
    """API keys named ``key``, or whose id it is (with or without ``cc_live_`` and the ellipsis shown)."""
    return Q(**{f"{prefix}lookup_id": key.removeprefix("cc_live_").rstrip("…")}) | Q(**{f"{prefix}name": key})


def ledger_entries(*, user: User | AnonymousUser, filters: LedgerFilters | None = None) -> QuerySet[LedgerEntry]:
    """Ledger rows of the projects ``user`` sees, newest first, narrowed by ``filters``."""
    filters = filters or LedgerFilters()
    projects = projects_for(user=user)
    if filters.project:
        projects = projects.filter(slug=filters.project)
    # Ids, not a join or subquery: the planner then estimates each project's rows and walks the
    # (project, created_at) index; behind a join on the slug it misjudged one project of a hundred
    # million rows as a few and read every partition (8.9 s instead of milliseconds).
    project_ids = list(projects.values_list("pk", flat=True))
    rows = LedgerEntry.objects.filter(project_id__in=project_ids)
    if filters.key:
        # Ids again: behind a join the planner took a key without rows for a common one and walked every
        # row of the projects (2.1 s at 2M rows); with the ids it reads "ledger_key_time". The key model
        # comes through the field: apps.keys shares the ledger's layer, so neither imports the other.
        keys = LedgerEntry._meta.get_field("api_key").related_model._default_manager.filter(
            key_matches(filters.key), project_id__in=project_ids
        )
        rows = rows.filter(api_key_id__in=list(keys.values_list("pk", flat=True)))
    if filters.model:
        rows = rows.filter(Q(requested_model=filters.model) | Q(served_model=filters.model))
    if filters.feature:
        rows = rows.filter(feature=filters.feature)
    if filters.end_user:
        rows = rows.filter(end_user=filters.end_user)
    if filters.endpoint:
        rows = rows.filter(endpoint=filters.endpoint)
    if filters.status == "ok":
        rows = rows.filter(status_code__lt=400)
    elif filters.status == "error":
        rows = rows.filter(status_code__gte=400)
    if filters.since is not None:
        rows = rows.filter(created_at__gte=filters.since)
    if filters.until is not None:
        rows = rows.filter(created_at__lt=filters.until)
    return rows.order_by("-created_at", "-id")


# Each ``LedgerTotals`` field, and what it is when no row matched.
TOTALS_ZEROS: dict[str, int | Decimal] = {
    "requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
    "cost": Decimal(0), "saved": Decimal(0),
}  # fmt: skip


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

    @classmethod
    def from_aggregate(cls, row: dict[str, Any]) -> LedgerTotals:
        """From ``aggregate(**totals_aggregates(…))`` over ledger rows or roll-ups (None when nothing matched)."""
        values: dict[str, Any] = {name: row[f"total_{name}"] or zero for name, zero in TOTALS_ZEROS.items()}
        return cls(**values)

    def __add__(self, other: LedgerTotals) -> LedgerTotals:
        return LedgerTotals(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost=self.cost + other.cost,
            saved=self.saved + other.saved,
        )


def totals_aggregates(*, requests: str) -> dict[str, Aggregate]:
    """The sums behind ``LedgerTotals``; ``requests`` is the column counting requests (ledger or roll-up)."""
    # Aliases differ from field names: Django refuses an aggregate that shadows a column it sums.
    return {
        "total_requests": Sum(requests),
        "total_prompt_tokens": Sum("prompt_tokens"),
        "total_cached_tokens": Sum("cached_tokens"),
        "total_completion_tokens": Sum("completion_tokens"),
        "total_cost": Sum("cost"),
        "total_saved": Sum(F("counterfactual_cost") - F("cost")),
    }


def ledger_totals(*, entries: QuerySet[LedgerEntry]) -> LedgerTotals:
    """Totals of ``entries`` in one aggregate query."""
    return LedgerTotals.from_aggregate(entries.order_by().aggregate(**totals_aggregates(requests="request_count")))


# The ledger's CSV columns (header, field): the ledger page's export and the reports' ledger export alike.
LEDGER_CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "request_id"),
    ("created_at", "created_at"),
    ("source", "source"),
    ("project", "project__slug"),
    ("key", "api_key__lookup_id"),
    ("key_name", "api_key__name"),
    ("provider", "provider__name"),
    ("endpoint", "endpoint"),
    ("feature", "feature"),
    ("end_user", "end_user"),
    ("requested_model", "requested_model"),
    ("served_model", "served_model"),
    ("prompt_tokens", "prompt_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("reasoning_tokens", "reasoning_tokens"),
    ("service_tier", "service_tier"),
    ("cost_usd", "cost"),
    ("counterfactual_cost_usd", "counterfactual_cost"),
    ("latency_ms", "latency_ms"),
    ("ttft_ms", "ttft_ms"),
    ("status_code", "status_code"),
    ("cache_hit", "cache_hit"),
    ("route", "route"),
    ("usage_estimated", "usage_estimated"),
    ("possibly_billed", "possibly_billed"),
)


def ledger_export_rows(
    *,
    entries: QuerySet[LedgerEntry],
    chunk_size: int = 2000,
) -> Iterator[tuple[Any, ...]]:
    """A header, then one tuple per row, read in chunks so an export never holds the whole ledger."""
    yield tuple(name for name, _ in LEDGER_CSV_COLUMNS)
    fields = [field for _, field in LEDGER_CSV_COLUMNS]
    # In a transaction Django declares its server-side cursor WITHOUT HOLD, and rows come as they are
    # fetched. Outside one (autocommit) it declares it WITH HOLD, and Postgres computes and stores the
    # whole result when that DECLARE commits: the first row of an export of 25M rows came after minutes.
    with transaction.atomic():
        yield from entries.values_list(*fields).iterator(chunk_size=chunk_size)


# Charts and summaries ------------------------------------------------------------------------------
# Everything below reads the narrow roll-ups only, never the ledger nor the full HourlyRollup slices:
# project totals per hour, and per hour one row per value of the one dimension a query splits by. Its
# cost grows with hours and that dimension's values, not with requests. Callers pass project ids they
# already scoped with ``projects_for``.

# The ledger column a group is filtered by on the ledger page, per group_by (see ``LedgerFilters``).
GROUP_BY_FIELDS: dict[str, str] = {
    "model": "served_model",
    "feature": "feature",
    "key": "api_key__lookup_id",
    "end_user": "end_user",
    "vendor": "vendor",
    "endpoint": "endpoint",
}
GROUP_BY_LABELS: dict[str, str] = {
    "model": "Model", "feature": "Feature", "key": "Key", "end_user": "End user", "vendor": "Vendor",
    "endpoint": "Endpoint",
}  # fmt: skip
BUCKETS = ("hour", "day")


def project_rollups_in(
    *, project_ids: Iterable[int], since: dt.datetime, until: dt.datetime
) -> QuerySet[ProjectHourlyRollup]:
    """Project totals of ``project_ids`` for hours in [since, until)."""
    return ProjectHourlyRollup.objects.filter(
        project_id__in=list(project_ids), hour__gte=since, hour__lt=until
    ).order_by()


def slice_rollups_in(
    *, project_ids: Iterable[int], since: dt.datetime, until: dt.datetime, dimension: str
) -> QuerySet[SliceHourlyRollup]:
    """Totals per value of ``dimension`` (a ``Dimension``) of ``project_ids`` for hours in [since, until)."""
    return SliceHourlyRollup.objects.filter(
        project_id__in=list(project_ids), dimension=dimension, hour__gte=since, hour__lt=until
    ).order_by()


def _group_field(group_by: str) -> str:
    """The ``SliceHourlyRollup`` column holding a group's key."""
    return "api_key__lookup_id" if group_by == Dimension.KEY else "value"


def _group_label(group_by: str, value: str, key_name: str | None) -> str:
    if group_by == "key":
        return f"{key_name} (cc_live_{value}…)" if value else "no key"
    return value or UNKNOWN_LABEL


def _group_values(group_by: str) -> list[str]:
    field = _group_field(group_by)
    return [field, "api_key__name"] if group_by == Dimension.KEY else [field]


def bucket_starts(*, since: dt.datetime, until: dt.datetime, bucket: str) -> list[dt.datetime]:
    """Every bucket start (UTC) from ``since`` up to ``until``, so empty hours or days still get a bar."""
    step = dt.timedelta(hours=1) if bucket == "hour" else dt.timedelta(days=1)
    current = timezone.localtime(since, dt.UTC).replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        current = current.replace(hour=0)
    starts = []
    while current < until:
        starts.append(current)
        current += step
    return starts


@dataclass(frozen=True)
class SeriesGroup:
    key: str  # the value to filter the ledger by ("" for none, "*other" for the folded tail)
    label: str
    values: list[Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.values, Decimal(0))


@dataclass(frozen=True)
class SpendSeries:
    group_by: str
    bucket: str
    starts: list[dt.datetime]
    groups: list[SeriesGroup]


OTHER = "*other"


def spend_series(
    *,
    project_ids: Iterable[int],
    since: dt.datetime,
    until: dt.datetime,
    group_by: str = "model",
    bucket: str = "day",
    limit: int = 8,
) -> SpendSeries:
    """Spend per hour or day (UTC) split by ``group_by``, in one query.

    The ``limit`` biggest groups over the whole range keep their own series; the rest are folded
    into one "other" series so a chart stays readable whatever the cardinality (end users).
    """
    if group_by not in GROUP_BY_FIELDS:
        raise ValueError(f"group_by must be one of {sorted(GROUP_BY_FIELDS)}")
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    field = _group_field(group_by)
    rows = (
        slice_rollups_in(project_ids=project_ids, since=since, until=until, dimension=group_by)
        .annotate(start=Trunc("hour", bucket, tzinfo=dt.UTC))
        .values("start", *_group_values(group_by))
        .annotate(spent=Sum("cost"))
    )
    starts = bucket_starts(since=since, until=until, bucket=bucket)
    index = {start: i for i, start in enumerate(starts)}
    values: dict[str, list[Decimal]] = {}
    labels: dict[str, str] = {}
    for row in rows:
        key = row[field] or ""
        labels.setdefault(key, _group_label(group_by, key, row.get("api_key__name")))
        series = values.setdefault(key, [Decimal(0)] * len(starts))
        slot = index.get(timezone.localtime(row["start"], dt.UTC))
        if slot is not None:
            series[slot] += row["spent"] or Decimal(0)
    ranked = sorted(values, key=lambda k: (-sum(values[k], Decimal(0)), labels[k]))
    groups = [SeriesGroup(key=k, label=labels[k], values=values[k]) for k in ranked[:limit]]
    if len(ranked) > limit:
        tail = [sum(column, Decimal(0)) for column in zip(*(values[k] for k in ranked[limit:]), strict=True)]
        groups.append(SeriesGroup(key=OTHER, label=f"{len(ranked) - limit} others", values=tail))
    return SpendSeries(group_by=group_by, bucket=bucket, starts=starts, groups=groups)


def histogram_percentile(counts: list[int], fraction: float) -> float | None:
    """Estimate a percentile from bucket counts over ``HISTOGRAM_EDGES_MS`` (linear within a bucket).

    The last bucket is open-ended: a percentile landing there is reported as its lower edge, a floor.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            low = HISTOGRAM_EDGES_MS[i]
            if i + 1 == len(HISTOGRAM_EDGES_MS):
                return float(low)
            high = HISTOGRAM_EDGES_MS[i + 1]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(HISTOGRAM_EDGES_MS[-1])


@dataclass(frozen=True)
class RollupSummary:
    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    counterfactual_cost: Decimal = Decimal(0)
    timed_count: int = 0
    streamed_count: int = 0
    latency_ms_sum: int = 0
    ttft_ms_sum: int = 0
    ttft_count: int = 0
    latency_hist: tuple[int, ...] = ()
    ttft_hist: tuple[int, ...] = ()

    @property
    def savings(self) -> Decimal:
        return self.counterfactual_cost - self.cost

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_hits / self.requests if self.requests else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def latency_mean_ms(self) -> float | None:
        """Over the gateway's requests only: imported usage carries no latency (``ledger_percentiles``)."""
        return self.latency_ms_sum / self.timed_count if self.timed_count else None

    @property
    def ttft_mean_ms(self) -> float | None:
        return self.ttft_ms_sum / self.ttft_count if self.ttft_count else None


def rollup_summary(*, project_ids: Iterable[int], since: dt.datetime, until: dt.datetime) -> RollupSummary:
    """Totals, cache hit rate and merged latency/TTFT histograms over the range, in one aggregate query."""
    buckets = range(len(HISTOGRAM_EDGES_MS))
    totals = project_rollups_in(project_ids=project_ids, since=since, until=until).aggregate(
        t_requests=Sum("requests"),
        t_errors=Sum("errors"),
        t_cache_hits=Sum("cache_hits"),
        t_prompt=Sum("prompt_tokens"),
        t_cached=Sum("cached_tokens"),
        t_completion=Sum("completion_tokens"),
        t_cost=Sum("cost"),
        t_counterfactual=Sum("counterfactual_cost"),
        t_timed=Sum("timed_count"),
        t_streamed=Sum("streamed_count"),
        t_latency=Sum("latency_ms_sum"),
        t_ttft=Sum("ttft_ms_sum"),
        t_ttft_count=Sum("ttft_count"),
        # ArrayField indexes are 0-based in Django and translated to SQL's 1-based subscripts.
        **{f"lat{i}": Sum(f"latency_hist__{i}") for i in buckets},
        **{f"ttft{i}": Sum(f"ttft_hist__{i}") for i in buckets},
    )
    return RollupSummary(
        requests=totals["t_requests"] or 0,
        errors=totals["t_errors"] or 0,
        cache_hits=totals["t_cache_hits"] or 0,
        prompt_tokens=totals["t_prompt"] or 0,
        cached_tokens=totals["t_cached"] or 0,
        completion_tokens=totals["t_completion"] or 0,
        cost=totals["t_cost"] or Decimal(0),
        counterfactual_cost=totals["t_counterfactual"] or Decimal(0),
        timed_count=totals["t_timed"] or 0,
        streamed_count=totals["t_streamed"] or 0,
        latency_ms_sum=totals["t_latency"] or 0,
        ttft_ms_sum=totals["t_ttft"] or 0,
        ttft_count=totals["t_ttft_count"] or 0,
        latency_hist=tuple(totals[f"lat{i}"] or 0 for i in buckets),
        ttft_hist=tuple(totals[f"ttft{i}"] or 0 for i in buckets),
    )


class PercentileDisc(Aggregate):
    """Postgres' ``percentile_disc``: the first value at or past ``fraction`` of the ordered rows, a real one."""

    function = "percentile_disc"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


# Percentiles are read from at most this many of a range's latest requests: exact for any range with
# fewer, and the recent traffic's for a bigger one (the page says so), so the overview's cost stays flat.
PERCENTILE_SAMPLE = 20_000


@dataclass(frozen=True)
class LatencyPercentiles:
    """p50 and p95 of the gateway's requests in a range, as the ledger holds them (real values, no estimate)."""

    sample: int = 0  # requests they were read from
    capped: bool = False  # True when the range had more than PERCENTILE_SAMPLE requests: the latest ones
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None


def ledger_percentiles(
    *, project_ids: Iterable[int], since: dt.datetime, until: dt.datetime, sample: int = PERCENTILE_SAMPLE
) -> LatencyPercentiles:
    """Latency and TTFT p50/p95 of the gateway's rows in [since, until), from the latest ``sample`` of them.

    Roll-up histograms are too coarse for the small latencies a cache or a near upstream gives (a 3 ms
    request sat in a 0–25 ms bucket and showed as 12 ms), so these come from the ledger itself, on its
    (project, created_at) index, in one query. Imported rows carry no latency and are left out; means
    and counts come from the roll-ups (``RollupSummary``), which hold them exactly.
    """
    latest = (
        LedgerEntry.objects.filter(
            project_id__in=list(project_ids), created_at__gte=since, created_at__lt=until, source=Source.GATEWAY
        )
        .order_by("-created_at")
        .values("id")[: sample + 1]
    )
    totals = LedgerEntry.objects.filter(id__in=latest).aggregate(
        n=Count("id"),
        p50=PercentileDisc("latency_ms", 0.5),
        p95=PercentileDisc("latency_ms", 0.95),
        ttft_p50=PercentileDisc("ttft_ms", 0.5),
        ttft_p95=PercentileDisc("ttft_ms", 0.95),
    )
    return LatencyPercentiles(
        sample=min(totals["n"], sample),
        capped=totals["n"] > sample,
        latency_p50_ms=totals["p50"],
        latency_p95_ms=totals["p95"],
        ttft_p50_ms=totals["ttft_p50"],
        ttft_p95_ms=totals["ttft_p95"],
    )


@dataclass(frozen=True)
class LeverTotals:
    lever: str
    requests: int
    cost: Decimal
    counterfactual_cost: Decimal
    share: float  # of all requests in the range

    @property
    def label(self) -> str:
        return Lever(self.lever).label

    @property
    def savings(self) -> Decimal:
        return self.counterfactual_cost - self.cost


def savings_by_lever(*, project_ids: Iterable[int], since: dt.datetime, until: dt.datetime) -> list[LeverTotals]:
    """Requests, cost and savings (counterfactual − cost) per saving lever, biggest saving first, one query."""
    rows = list(
        slice_rollups_in(project_ids=project_ids, since=since, until=until, dimension=Dimension.LEVER)
        .values("value")
        .annotate(n=Sum("requests"), spent=Sum("cost"), would_have=Sum("counterfactual_cost"))
    )
    total = sum(row["n"] or 0 for row in rows)
    levers = [
        LeverTotals(
            lever=row["value"],
            requests=row["n"] or 0,
            cost=row["spent"] or Decimal(0),
            counterfactual_cost=row["would_have"] or Decimal(0),
            share=(row["n"] or 0) / total if total else 0.0,
        )
        for row in rows
    ]
    return sorted(levers, key=lambda lever: (-lever.savings, lever.lever))


@dataclass(frozen=True)
class TopRow:
    key: str
    label: str
    requests: int
    tokens: int
    cost: Decimal
    counterfactual_cost: Decimal

    @property
    def savings(self) -> Decimal:
        return self.counterfactual_cost - self.cost


def rollup_top(
    *, project_ids: Iterable[int], since: dt.datetime, until: dt.datetime, group_by: str, limit: int = 10
) -> list[TopRow]:
    """The ``limit`` biggest spenders by ``group_by`` over the range, in one query."""
    if group_by not in GROUP_BY_FIELDS:
        raise ValueError(f"group_by must be one of {sorted(GROUP_BY_FIELDS)}")
    field = _group_field(group_by)
    rows = (
        slice_rollups_in(project_ids=project_ids, since=since, until=until, dimension=group_by)
        .values(*_group_values(group_by))
        .annotate(
            n=Sum("requests"),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            spent=Sum("cost"),
            would_have=Sum("counterfactual_cost"),
        )
        .order_by("-spent", field)[:limit]
    )
    return [
        TopRow(
            key=row[field] or "",
            label=_group_label(group_by, row[field] or "", row.get("api_key__name")),
            requests=row["n"] or 0,
            tokens=row["tokens"] or 0,
            cost=row["spent"] or Decimal(0),
            counterfactual_cost=row["would_have"] or Decimal(0),
        )
        for row in rows
    ]


def rollup_lag_seconds(*, now: dt.datetime | None = None) -> float | None:
    """Seconds since the roll-ups last caught up with the ledger (None before the first roll-up)."""
    watermark = RollupWatermark.objects.order_by("pk").values_list("ingested_before", flat=True).first()
    if watermark is None:
        return None
    return max(((now or timezone.now()) - watermark).total_seconds(), 0.0)


def with_readback(entries: QuerySet[LedgerEntry]) -> QuerySet[LedgerEntry]:
    """``entries`` with ``readback``: a background response's read-back status (``ReadBack``), else None. Its row
    holds the worst case until the status is ``read``. For a page of rows: one indexed look-up per row."""
    status = BackgroundResponse.objects.filter(request_id=OuterRef("request_id")).values("status")[:1]
    return entries.annotate(readback=Subquery(status))
