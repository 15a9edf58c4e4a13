"""Ledger ingest (Redis stream → Postgres) and hourly roll-ups."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from apps.core import names
from apps.core.events import EVENT_FIELD, ledger_event_clean
from apps.ledger.consumer import DeadLetter, dead_letters_report, store_or_bisect
from apps.ledger.models import (
    HISTOGRAM_EDGES_MS,
    Dimension,
    HourlyRollup,
    LedgerEntry,
    Lever,
    ProjectHourlyRollup,
    RollupWatermark,
    SliceHourlyRollup,
    Source,
    histogram_empty,
)
from apps.ledger.stream import acknowledge, read_batch
from apps.ledger.stream import ensure_group as stream_ensure_group
from apps.providers.models import KIND_VENDORS

logger = logging.getLogger(__name__)

# Rows that commit late (a slow ingest transaction) still land in a hour that
# the roll-up recomputes, as long as they commit within this margin.
ROLLUP_OVERLAP = dt.timedelta(minutes=5)


def ledger_stream() -> str:
    return names.ledger_stream(settings.REDIS_PREFIX)


def dead_letter_stream() -> str:
    return names.dead_letters(ledger_stream())


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def ensure_group(client: redis.Redis) -> None:
    stream_ensure_group(client, ledger_stream())


def _entry_from_event(raw: Any) -> LedgerEntry:
    """The row for one event, cleaned again here (defence in depth: the gateway cleans it before the XADD)."""
    if not isinstance(raw, dict):
        raise TypeError(f"a ledger event is a JSON object, not {type(raw).__name__}")
    if not isinstance(raw.get("request_id"), str) or not raw["request_id"]:
        raise KeyError("request_id")
    event = ledger_event_clean(raw)
    return LedgerEntry(
        request_id=event["request_id"],
        created_at=dt.datetime.fromtimestamp(float(event["created_at"]), dt.UTC),
        organization_id=event["organization_id"],
        project_id=event["project_id"],
        api_key_id=event.get("api_key_id"),
        provider_id=event.get("provider_id"),
        endpoint=event["endpoint"],
        feature=event.get("feature") or "",
        end_user=event.get("end_user") or "",
        requested_model=event.get("requested_model") or "",
        served_model=event.get("served_model") or "",
        prompt_tokens=int(event.get("prompt_tokens") or 0),
        cached_tokens=int(event.get("cached_tokens") or 0),
        cache_write_tokens=int(event.get("cache_write_tokens") or 0),
        completion_tokens=int(event.get("completion_tokens") or 0),
        usage_estimated=bool(event.get("usage_estimated")),
        cost=Decimal(event.get("cost") or "0"),
        counterfactual_cost=Decimal(event.get("counterfactual_cost") or "0"),
        latency_ms=int(event.get("latency_ms") or 0),
        ttft_ms=event.get("ttft_ms"),
        status_code=int(event["status_code"]),
        error_code=event.get("error_code") or "",
        streamed=bool(event.get("streamed")),
        cache_hit=event.get("cache_hit") or "",
        route=event["route"],
        decision=event["decision"],
        route_rule_id=event.get("route_rule_id"),
        possibly_billed=event["possibly_billed"],
    )


def ledger_ingest_batch(
    *, client: redis.Redis, consumer: str, count: int = 500, block_ms: int = 1000, claim_idle_ms: int = 30_000
) -> int:
    """Move up to ``count`` events from the stream into Postgres; returns how many were handled.

    Entries are acknowledged only after the insert committed. If this process
    dies first they stay pending and are re-read (by us on restart, or by any
    consumer once idle for ``claim_idle_ms``). Inserts ignore request ids that
    already exist, so a re-read never duplicates a row. An entry that cannot be
    read or stored goes to the dead-letter stream; the others are stored.
    """
    ensure_group(client)
    stream = ledger_stream()
    entries = read_batch(client, stream, consumer, count=count, block_ms=block_ms, claim_idle_ms=claim_idle_ms)
    if not entries:
        return 0
    rows: list[tuple[bytes, dict[Any, Any], LedgerEntry]] = []
    dead: list[DeadLetter] = []
    for entry_id, fields in entries:
        if not fields:  # deleted from the stream while pending; nothing to keep
            continue
        try:
            rows.append((entry_id, fields, _entry_from_event(orjson.loads(fields[EVENT_FIELD]))))
        except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
            dead.append((entry_id, fields, f"unreadable: {type(exc).__name__}: {exc}"[:1000]))
    refused = store_or_bisect(
        rows, lambda chunk: LedgerEntry.objects.bulk_create([row for _id, _f, row in chunk], ignore_conflicts=True)
    )
    dead += [(entry_id, fields, error) for (entry_id, fields, _row), error in refused]
    dead_letters_report(stream=stream, dead=dead, field=EVENT_FIELD)
    acknowledge(client, stream, [entry_id for entry_id, _fields in entries], dead_letters=dead)
    return len(entries)


# The saving lever a ledger row used, first match wins:
# ``cache``   — the answer came from the exact or semantic cache (``cache_hit`` is set);
# ``cascade`` — a cascade rule decided (the decision's ``action``);
# ``routing`` — another routing rule picked the model (the decision's ``kind`` is ``rule``);
# ``batch``   — the request went through the batch endpoint (``endpoint`` starts with "batch");
# ``none``    — none of these.
LEVER_SQL = Case(
    When(~Q(cache_hit=""), then=Value(Lever.CACHE.value)),
    When(decision__action="cascade", then=Value(Lever.CASCADE.value)),
    When(decision__kind="rule", then=Value(Lever.ROUTING.value)),
    When(endpoint__startswith="batch", then=Value(Lever.BATCH.value)),
    default=Value(Lever.NONE.value),
)

# The vendor of a ledger row's provider (``apps.providers.models.KIND_VENDORS``); an OpenAI-compatible
# provider is its own vendor, and a row no provider served (refused, or a cache hit of none) has none.
VENDOR_SQL = Case(
    *(When(provider__kind=kind, then=Value(vendor)) for kind, vendor in KIND_VENDORS.items()),
    default=Coalesce(F("provider__name"), Value("")),
)


# The gateway's own rows are timed; imported rows have no latency to count.
TIMED = Q(source=Source.GATEWAY)


def _histogram_counts(field: str) -> dict[str, Count]:
    """One filtered COUNT per bucket of ``field`` over timed rows; rows where it is NULL count nowhere."""
    counts = {}
    bounds = [*HISTOGRAM_EDGES_MS[1:], None]
    for i, (low, high) in enumerate(zip(HISTOGRAM_EDGES_MS, bounds, strict=True)):
        q = TIMED & Q(**{f"{field}__gte": low})
        if high is not None:
            q &= Q(**{f"{field}__lt": high})
        counts[f"{field}_b{i}"] = Count("id", filter=q)
    return counts


def _histogram(row: Any, field: str) -> list[int]:
    return [row[f"{field}_b{i}"] for i in range(len(HISTOGRAM_EDGES_MS))]


def rollups_refresh() -> int:
    """Recompute the roll-ups of every hour that received ledger rows since the last run.

    Each hour gets its full slices (``HourlyRollup``), its project totals
    (``ProjectHourlyRollup``) and its totals per dimension value
    (``SliceHourlyRollup``), all from one pass over that hour of the ledger.
    Whole hours are recomputed (delete + insert), so running it twice, or
    concurrently with ingest, never double counts. Returns the hours refreshed.
    """
    started = timezone.now()
    with transaction.atomic():
        watermark = RollupWatermark.objects.select_for_update().first()
        if watermark is None:
            watermark = RollupWatermark.objects.create(ingested_before=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        hours = list(
            LedgerEntry.objects.filter(ingested_at__gte=watermark.ingested_before - ROLLUP_OVERLAP)
            .annotate(hour=TruncHour("created_at"))
            .values_list("hour", flat=True)
            .distinct()
        )
        for hour in hours:
            _rollup_hour(hour)
        watermark.ingested_before = started
        watermark.save(update_fields=["ingested_before"])
    return len(hours)


_MEASURES = ("requests", "errors", "cache_hits", "prompt_tokens", "cached_tokens", "completion_tokens")
_MONEY = ("cost", "counterfactual_cost")
_LATENCY = ("timed_count", "streamed_count", "latency_ms_sum", "ttft_ms_sum", "ttft_count")
_HISTOGRAMS = ("latency_hist", "ttft_hist")


def _add(total: dict[str, Any], row: HourlyRollup, *, latency: bool) -> None:
    for name in (*_MEASURES, *_MONEY, *(_LATENCY if latency else ())):
        total[name] = total.get(name, 0) + getattr(row, name)
    if latency:
        for name in _HISTOGRAMS:
            total[name] = [a + b for a, b in zip(total.get(name) or histogram_empty(), getattr(row, name), strict=True)]


def _slice_values(row: HourlyRollup) -> tuple[tuple[str, str, int | None], ...]:
    """The (dimension, value, api key id) of every ``SliceHourlyRollup`` row that ``row`` adds to."""
    return (
        (Dimension.MODEL, row.served_model, None),
        (Dimension.FEATURE, row.feature, None),
        (Dimension.KEY, "", row.api_key_id),
        (Dimension.END_USER, row.end_user, None),
        (Dimension.LEVER, row.lever, None),
        (Dimension.VENDOR, row.vendor, None),
    )


def _rollup_hour(hour: dt.datetime) -> None:
    for model in (HourlyRollup, ProjectHourlyRollup, SliceHourlyRollup):
        model.objects.filter(hour=hour).delete()
    slices = (
        LedgerEntry.objects.filter(created_at__gte=hour, created_at__lt=hour + dt.timedelta(hours=1))
        .annotate(slice_lever=LEVER_SQL, slice_vendor=VENDOR_SQL)
        .values(
            "organization_id",
            "project_id",
            "api_key_id",
            "served_model",
            "feature",
            "end_user",
            "slice_lever",
            "slice_vendor",
        )  # fmt: skip
        .annotate(
            requests=Sum("request_count"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            cache_hits=Count("id", filter=~Q(cache_hit="")),
            timed=Count("id", filter=TIMED),
            streamed_n=Count("id", filter=TIMED & Q(streamed=True)),
            prompt=Sum("prompt_tokens"),
            cached=Sum("cached_tokens"),
            completion=Sum("completion_tokens"),
            total_cost=Sum("cost"),
            total_counterfactual=Sum("counterfactual_cost"),
            latency=Sum("latency_ms", filter=TIMED),
            ttft=Sum("ttft_ms", filter=TIMED),
            ttft_n=Count("ttft_ms", filter=TIMED),
            **_histogram_counts("latency_ms"),
            **_histogram_counts("ttft_ms"),
        )
        .order_by()
    )
    rows = [
        HourlyRollup(
            hour=hour,
            organization_id=s["organization_id"],
            project_id=s["project_id"],
            api_key_id=s["api_key_id"],
            served_model=s["served_model"],
            feature=s["feature"],
            end_user=s["end_user"],
            lever=s["slice_lever"],
            vendor=s["slice_vendor"],
            requests=s["requests"] or 0,
            errors=s["errors"],
            cache_hits=s["cache_hits"],
            prompt_tokens=s["prompt"] or 0,
            cached_tokens=s["cached"] or 0,
            completion_tokens=s["completion"] or 0,
            cost=s["total_cost"] or 0,
            counterfactual_cost=s["total_counterfactual"] or 0,
            timed_count=s["timed"],
            streamed_count=s["streamed_n"],
            latency_ms_sum=s["latency"] or 0,
            latency_hist=_histogram(s, "latency_ms"),
            ttft_ms_sum=s["ttft"] or 0,
            ttft_count=s["ttft_n"],
            ttft_hist=_histogram(s, "ttft_ms"),
        )
        for s in slices
    ]
    HourlyRollup.objects.bulk_create(rows, batch_size=2000)
    # The narrower roll-ups are sums of the rows just computed: folded here, no second pass over the ledger.
    projects: dict[int, dict[str, Any]] = {}
    values: dict[tuple[int, str, str, int | None], dict[str, Any]] = {}
    for row in rows:
        _add(projects.setdefault(row.project_id, {"organization_id": row.organization_id}), row, latency=True)
        for dimension, value, api_key_id in _slice_values(row):
            total = values.setdefault(
                (row.project_id, dimension, value, api_key_id), {"organization_id": row.organization_id}
            )
            _add(total, row, latency=False)
    ProjectHourlyRollup.objects.bulk_create(
        (ProjectHourlyRollup(hour=hour, project_id=project_id, **total) for project_id, total in projects.items()),
        batch_size=2000,
    )
    SliceHourlyRollup.objects.bulk_create(
        (
            SliceHourlyRollup(
                hour=hour, project_id=project_id, dimension=dimension, value=value, api_key_id=api_key_id, **total
            )
            for (project_id, dimension, value, api_key_id), total in values.items()
        ),
        batch_size=2000,
    )
