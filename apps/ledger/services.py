"""Ledger ingest (Redis stream → Postgres) and hourly roll-ups."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone
from psycopg import sql

from apps.audit.models import AuditAction
from apps.audit.services import audit_record
from apps.core import names
from apps.core.events import EVENT_FIELD, ledger_event_clean
from apps.core.responses import is_response_id
from apps.enforcement.redis_clients import sync_client
from apps.ledger.consumer import (
    ENTRY_ERRORS,
    DeadLetter,
    collector_paused,
    dead_letters_report,
    parsed_entries,
    store_or_bisect,
)
from apps.ledger.models import (
    HISTOGRAM_EDGES_MS,
    BackgroundResponse,
    Dimension,
    HourlyRollup,
    LedgerEntry,
    LedgerRetention,
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
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

# Rows that commit late (a slow ingest transaction) still land in a hour that
# the roll-up recomputes, as long as they commit within this margin.
ROLLUP_OVERLAP = dt.timedelta(minutes=5)


def ledger_stream() -> str:
    return names.ledger_stream(settings.REDIS_PREFIX)


def dead_letter_stream() -> str:
    return names.dead_letters(ledger_stream())


def redis_client() -> redis.Redis:
    return sync_client(settings.REDIS_URL)


def ensure_group(client: redis.Redis) -> None:
    stream_ensure_group(client, ledger_stream())


# The columns an ingested event fills, in the order ``_row_from_event`` returns them.
INGEST_COLUMNS: tuple[str, ...] = (
    "request_id",
    "created_at",
    "source",
    "organization_id",
    "project_id",
    "api_key_id",
    "provider_id",
    "endpoint",
    "feature",
    "end_user",
    "requested_model",
    "served_model",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "service_tier",
    "usage_estimated",
    "possibly_billed",
    "cost",
    "counterfactual_cost",
    "latency_ms",
    "ttft_ms",
    "status_code",
    "error_code",
    "streamed",
    "cache_hit",
    "route",
    "decision",
    "route_rule_id",
    "request_count",
    "cache_key",
    "prefix_key",
    "prefix_tokens",
    "embedding_key",
    "max_tokens",
    "turns",
)
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, (*INGEST_COLUMNS, "ingested_at")))
_STAGING_CREATE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS ledger_ingest_staging AS SELECT {} FROM ledger_ledgerentry WITH NO DATA"
).format(_COLUMNS)
_STAGING_COPY = sql.SQL("COPY ledger_ingest_staging ({}) FROM STDIN").format(_COLUMNS)
_STAGING_MOVE = sql.SQL(
    "INSERT INTO ledger_ledgerentry ({}) SELECT {} FROM ledger_ingest_staging ON CONFLICT DO NOTHING"
).format(_COLUMNS, _COLUMNS)
_COPY = sql.SQL("COPY ledger_ledgerentry ({}) FROM STDIN").format(_COLUMNS)
BIGINT_MAX = 2**63 - 1
# COPY lines are handed to psycopg about this many at a time (~32 kB, what it sends in one go).
_LINES_PER_WRITE = 96


def _required_id(event: dict[str, Any], name: str) -> int:
    """An identity column's value: an integer a ``bigint`` holds, or the event is refused (dead-lettered)."""
    value = event.get(name)
    if type(value) is not int:
        raise TypeError(f"{name} is not an integer: {value!r:.100}")
    if not 0 < value <= BIGINT_MAX:
        raise ValueError(f"{name} {value} is out of range for a row id")
    return value


def _event_clean(raw: Any) -> dict[str, Any]:
    """The event fitted to the ledger's columns: the gateway sends ledger events as it knows them, and this
    clean is what keeps a hostile value out of the columns; an event without its identity is refused (raises)."""
    if not isinstance(raw, dict):
        raise TypeError(f"a ledger event is a JSON object, not {type(raw).__name__}")
    if not isinstance(raw.get("request_id"), str) or not raw["request_id"]:
        raise KeyError("request_id")
    event = ledger_event_clean(raw)
    _required_id(event, "organization_id")
    _required_id(event, "project_id")
    return event


def _created_at(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromtimestamp(event["created_at"], dt.UTC)


def _row_from_event(raw: Any) -> tuple[Any, ...]:
    """The row for one event, in ``INGEST_COLUMNS`` order, as Python values. The decision is its JSON text.

    ``_copy_line`` is the same row as COPY text: the ingest writes that one; this one is what the ORM
    stores (``_entry_from_event``), and the tests hold the two equal."""
    event = _event_clean(raw)
    decision = event["decision"]
    return (
        event["request_id"],
        _created_at(event),
        Source.GATEWAY.value,
        event["organization_id"],
        event["project_id"],
        event["api_key_id"],
        event["provider_id"],
        event["endpoint"],
        event["feature"],
        event["end_user"],
        event["requested_model"],
        event["served_model"],
        event["prompt_tokens"],
        event["cached_tokens"],
        event["cache_write_tokens"],
        event["completion_tokens"],
        event["reasoning_tokens"],
        event["service_tier"],
        event["usage_estimated"],
        event["possibly_billed"],
        Decimal(event["cost"]),
        Decimal(event["counterfactual_cost"]),
        event["latency_ms"],
        event["ttft_ms"],
        event["status_code"],
        event["error_code"],
        event["streamed"],
        event["cache_hit"],
        event["route"],
        None if decision is None else orjson.dumps(decision).decode(),
        event["route_rule_id"],
        1,  # a gateway row is one request (an imported usage row may stand for many)
        event["cache_key"],
        event["prefix_key"],
        event["prefix_tokens"],
        event["embedding_key"],
        event["max_tokens"],
        event["turns"],
    )


# The text of each second a COPY line's created_at fell in lately; events come in time order, so a batch
# formats a few seconds, not one per row.
_SECONDS: dict[float, str] = {}
_LAST_SECOND = 253_402_300_799  # 9999-12-31 23:59:59 UTC; datetime stops there as well


def _created_at_text(stamp: float) -> str:
    """``_created_at`` as Postgres reads it, in ~0.5 µs rather than str(datetime)'s ~1.3 µs: the same
    microsecond (rounded half to even, as ``datetime.fromtimestamp``), the same refusal past year 9999."""
    fraction, whole = math.modf(stamp)
    micros = round(fraction * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    second = _SECONDS.get(whole)
    if second is None:
        if whole > _LAST_SECOND:
            raise ValueError(f"created_at {stamp} is past year 9999")
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        second = _SECONDS[whole] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole))
    return f"{second}.{micros:06d}+00"


# Stands for NULL while a COPY line is built, replaced by COPY's \N after the line is escaped: no cleaned
# value holds a NUL (the text cleaning removes it, and JSON writes it as \u0000).
_NULL = "\x00"
_GATEWAY = Source.GATEWAY.value


def _copy_line(event: dict[str, Any], ingested_at: str) -> bytes:
    """The ledger row of a cleaned event (``_event_clean``) as one line of COPY text, ``ingested_at`` last.

    One f-string, not a tuple that psycopg formats value by value (~3.5 µs a row). Cleaned text holds
    no tab, newline or other control character (the delimiter and line end are safe), so a backslash
    is the one character to escape; most events have none and are not scanned twice."""
    decision = event["decision"]
    api_key_id, provider_id, ttft_ms = event["api_key_id"], event["provider_id"], event["ttft_ms"]
    rule_id, max_tokens = event["route_rule_id"], event["max_tokens"]
    line = (
        f"{event['request_id']}\t{_created_at_text(event['created_at'])}\t{_GATEWAY}\t{event['organization_id']}\t"
        f"{event['project_id']}\t{_NULL if api_key_id is None else api_key_id}\t"
        f"{_NULL if provider_id is None else provider_id}\t{event['endpoint']}\t{event['feature']}\t"
        f"{event['end_user']}\t{event['requested_model']}\t{event['served_model']}\t{event['prompt_tokens']}\t"
        f"{event['cached_tokens']}\t{event['cache_write_tokens']}\t{event['completion_tokens']}\t"
        f"{event['reasoning_tokens']}\t{event['service_tier']}\t{'t' if event['usage_estimated'] else 'f'}\t"
        f"{'t' if event['possibly_billed'] else 'f'}\t{event['cost']}\t{event['counterfactual_cost']}\t"
        f"{event['latency_ms']}\t{_NULL if ttft_ms is None else ttft_ms}\t{event['status_code']}\t"
        f"{event['error_code']}\t{'t' if event['streamed'] else 'f'}\t{event['cache_hit']}\t{event['route']}\t"
        f"{_NULL if decision is None else orjson.dumps(decision).decode()}\t{_NULL if rule_id is None else rule_id}\t"
        f"1\t{event['cache_key']}\t{event['prefix_key']}\t{event['prefix_tokens']}\t{event['embedding_key']}\t"
        f"{_NULL if max_tokens is None else max_tokens}\t{event['turns']}\t{ingested_at}\n"
    )
    if "\\" in line:
        line = line.replace("\\", "\\\\")
    # encode() here, per event: a value UTF-8 cannot hold (a lone surrogate) refuses this event alone.
    return line.replace(_NULL, "\\N").encode()


def _entry_from_event(raw: Any) -> LedgerEntry:
    """The ``LedgerEntry`` for one event (the same cleaning as the ingest's rows)."""
    values = dict(zip(INGEST_COLUMNS, _row_from_event(raw), strict=True))
    if values["decision"] is not None:
        values["decision"] = orjson.loads(values["decision"])
    return LedgerEntry(**values)


def _copy_lines(copy: Any, lines: Iterable[bytes]) -> None:
    """Hand ``lines`` to a COPY about 32 kB at a time: Postgres stores each chunk while the next is made,
    with a call per chunk rather than per line."""
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == _LINES_PER_WRITE:
            copy.write(b"".join(chunk))
            chunk.clear()
    if chunk:
        copy.write(b"".join(chunk))


def ledger_rows_copy(lines: Iterable[bytes]) -> None:
    """Insert rows given as COPY lines (``_copy_line``), skipping request ids already stored.

    COPY cannot skip conflicts, so the rows go to a per-connection temporary table first and
    one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` moves them over: a re-delivered event (same
    request id and time) is not stored twice. Call inside a transaction; the database's
    refusals are raised as Django's ``DataError``/``IntegrityError``, like the ORM's.
    """
    with connection.wrap_database_errors, connection.cursor() as cursor:
        cursor.execute(_STAGING_CREATE)
        with cursor.cursor.copy(_STAGING_COPY) as copy:
            _copy_lines(copy, lines)
        cursor.execute(_STAGING_MOVE)
        # Emptied here, not at commit: a caller's outer transaction may span several batches. TRUNCATE,
        # not DELETE: autovacuum never visits a temporary table, and the dead rows DELETE left made each
        # batch slower in a long-lived consumer (Postgres CPU per row 28 -> 38 -> 50 µs over three
        # bench_ingest runs of 100,000 rows in one process).
        cursor.execute("TRUNCATE ledger_ingest_staging")


def _rows_copy_direct(lines: Iterable[bytes]) -> None:
    """COPY rows given as COPY lines straight into the ledger; call inside a transaction.

    Half the database's work of ``ledger_rows_copy`` (no staging table), but a request id already
    stored fails the whole COPY with ``IntegrityError``: the caller then falls back to that path.
    """
    with connection.wrap_database_errors, connection.cursor() as cursor:
        with cursor.cursor.copy(_COPY) as copy:
            _copy_lines(copy, lines)


def _background_from_event(event: dict[str, Any]) -> BackgroundResponse | None:
    """The read-back row of a background response billed at its worst case (``event`` cleaned by
    ``_event_clean``); None for every other event."""
    response_id = event.get("background_response_id")
    if not is_response_id(response_id) or event.get("provider_id") is None:
        return None
    assert isinstance(response_id, str)
    return BackgroundResponse(
        request_id=event["request_id"], ledger_created_at=_created_at(event), response_id=response_id,
        organization_id=event["organization_id"], project_id=event["project_id"], provider_id=event["provider_id"],
    )  # fmt: skip


Parsed = tuple[bytes, dict[Any, Any], bytes, BackgroundResponse | None]


def _parser(ingested_at: str) -> Callable[[Any], tuple[bytes, BackgroundResponse | None]]:
    """What turns an event into its COPY line (rows ingested at ``ingested_at``) and the read-back row of
    its background response, if it is one."""

    def parse(raw: Any) -> tuple[bytes, BackgroundResponse | None]:
        event = _event_clean(raw)
        return _copy_line(event, ingested_at), _background_from_event(event)

    return parse


def _backgrounds_store(chunk: Sequence[Parsed]) -> None:
    pending = [background for _id, _f, _line, background in chunk if background is not None]
    if pending:
        BackgroundResponse.objects.bulk_create(pending, ignore_conflicts=True)


def _store_chunk(chunk: Sequence[Parsed]) -> None:
    """The ledger rows of ``chunk``, and the read-back rows of its background responses, in one transaction."""
    ledger_rows_copy(line for _id, _f, line, _bg in chunk)
    _backgrounds_store(chunk)


def ledger_ingest_batch(
    *, client: redis.Redis, consumer: str, count: int = 500, block_ms: int = 1000, claim_idle_ms: int = 30_000
) -> int:
    """Move up to ``count`` events from the stream into Postgres; returns how many were handled.

    The rows go straight into the ledger with one COPY, fed as the events are parsed, so Postgres
    stores one chunk while this process cleans the next. When the database refuses that COPY (a
    re-delivered event already stored, or a bad row) the batch goes again through
    ``ledger_rows_copy``, which skips stored request ids, bisected down to the rows it refuses. The
    read-back rows of background responses go in the same transaction as their ledger rows.
    Entries are acknowledged only after the insert committed. If this process dies first they stay
    pending and are re-read (by us on restart, or by any consumer once idle for ``claim_idle_ms``);
    a re-read never duplicates a row. An entry that cannot be read or stored goes to the dead-letter
    stream; the others are stored.
    """
    ensure_group(client)
    stream = ledger_stream()
    with collector_paused():
        entries = read_batch(client, stream, consumer, count=count, block_ms=block_ms, claim_idle_ms=claim_idle_ms)
        return _ingest_entries(client, stream, entries) if entries else 0


def _ingest_entries(client: redis.Redis, stream: str, entries: list[tuple[bytes, Any]]) -> int:
    dead: list[DeadLetter] = []
    parsed: list[Parsed] = []
    parse = _parser(timezone.now().isoformat())

    def lines() -> Iterator[bytes]:
        for entry_id, fields, (line, background) in parsed_entries(entries, parse, EVENT_FIELD, dead):
            parsed.append((entry_id, fields, line, background))
            yield line

    feed = lines()
    try:
        with transaction.atomic():
            _rows_copy_direct(feed)
            _backgrounds_store(parsed)
    except ENTRY_ERRORS:
        deque(feed, maxlen=0)  # parse what the failed COPY did not reach
        refused = store_or_bisect(parsed, _store_chunk)
        dead += [(entry_id, fields, error) for (entry_id, fields, _line, _bg), error in refused]
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


def rollups_recompute(*, hours: Sequence[dt.datetime]) -> None:
    """Recompute the roll-ups of ``hours`` now (ledger rows in them were corrected after they were rolled up).

    Under the watermark's lock, so it never interleaves with ``rollups_refresh`` on the same hour."""
    with transaction.atomic():
        RollupWatermark.objects.select_for_update().first()
        for hour in dict.fromkeys(h.replace(minute=0, second=0, microsecond=0) for h in hours):
            _rollup_hour(hour)


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
        (Dimension.ENDPOINT, row.endpoint, None),
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
            "endpoint",
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
            endpoint=s["endpoint"],
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


def ledger_retention_set(*, organization: Organization, days: int | None, use_default: bool = False) -> None:
    """Keep ``organization``'s ledger rows ``days`` days (None: forever), or follow the deployment's default.

    Audited as a change of the organisation. ``days`` below one is refused (ValidationError).
    """
    current = LedgerRetention.objects.filter(organization=organization).first()
    before = {"ledger_retention_days": "default" if current is None else current.days}
    if use_default:
        LedgerRetention.objects.filter(organization=organization).delete()
    else:
        retention = current or LedgerRetention(organization=organization)
        retention.days = days
        retention.full_clean()
        retention.save()
    after = {"ledger_retention_days": "default" if use_default else days}
    if before != after:
        audit_record(action=AuditAction.UPDATE, obj=organization, before=before, after=after)
