"""Importing OpenAI usage and cost exports into the ledger.

Accepted import files (UTF-8 CSV, format detected from the header row):

* **Usage** — OpenAI's usage export / Usage API completions buckets. Required:
  a time column (``start_time`` as Unix seconds or ISO 8601, or ``date`` /
  ``start_time_iso``), ``model``, ``input_tokens``, ``output_tokens``.
  Optional: ``input_cached_tokens``, ``num_model_requests``, ``project_id``,
  ``api_key_id``, ``user_id``, ``batch``, ``end_time``, and a cost column
  (``amount.value``, ``amount_value``, ``cost`` or ``cost_usd``) with
  ``amount.currency`` / ``currency``. ``input_tokens`` includes cached tokens,
  as in OpenAI's API, which is also how the ledger counts prompt tokens.
* **Costs** — OpenAI's cost export / Costs API buckets: a time column, a cost
  column (``amount.value``…), optional ``amount.currency``, ``line_item``
  (``"gpt-4o-mini-2024-07-18, input"``: the model is the part before the
  comma) and ``project_id``. Rows carry cost and no tokens.

Each file row becomes one ``LedgerEntry`` with ``source="imported"``, dated at
the bucket's start, attributed to the chosen project. Cost comes from the file
when it has one, else from the organisation's price for the model on that day
(its OpenAI provider first, then any provider, then the public catalogue;
batch rows at batch prices). Imported spend bypassed the gateway, so its
counterfactual equals its cost: no savings are claimed for it.

A row's request id is derived from what identifies its bucket, not from the
file: the organisation, the format, the bucket's start and every column that
is not a measure (model, project_id, api_key_id, user_id, batch, line_item,
and any column we do not know). Importing the same file again, the same rows
in another order, or a later export that overlaps an earlier one therefore
replaces those buckets' rows instead of adding to them: the file imported last wins,
which also corrects a bucket that was still filling when it was first exported.
Two rows of one file with the same identity are reported as a bad line.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.core.pricing import MTOK, token_cost
from apps.ledger.models import LedgerEntry, Source
from apps.ledger.services import rollups_refresh
from apps.providers.models import Provider, ProviderKind
from apps.providers.selectors import PriceBook
from apps.tenancy.models import Organization, Project

logger = logging.getLogger(__name__)


MAX_IMPORT_ROWS = 200_000


MAX_TOKENS = 2**31 - 1  # the ledger's token columns are 32-bit


EARLIEST = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)


_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("start_time", "start_time_iso", "date", "day", "bucket_start"),
    "model": ("model", "model_name"),
    "input": ("input_tokens",),
    "cached": ("input_cached_tokens", "cached_tokens"),
    "output": ("output_tokens",),
    "requests": ("num_model_requests", "requests"),
    "project": ("project_id",),
    "key": ("api_key_id",),
    "user": ("user_id",),
    "batch": ("batch",),
    "cost": ("amount.value", "amount_value", "cost", "cost_usd"),
    "currency": ("amount.currency", "amount_currency", "currency"),
    "line_item": ("line_item",),
}


# Columns that say nothing about which bucket a row is: its measures and the time columns (the
# parsed bucket start stands for them). Every other column is part of the row's identity.
_NOT_IDENTITY = frozenset(
    name for field in ("time", "input", "cached", "output", "requests", "cost", "currency") for name in _ALIASES[field]
) | {"end_time", "end_time_iso"}


class ImportFormat:
    USAGE = "usage"
    COSTS = "costs"


@dataclass(frozen=True)
class ImportProblem:
    line: int
    message: str


class ImportRejected(Exception):
    """The file had problems; nothing was written. ``errors`` lists every one with its line."""

    def __init__(self, errors: list[ImportProblem]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the file")
        self.errors = errors


@dataclass(frozen=True)
class ImportResult:
    format: str
    rows: int
    created: int
    replaced: int  # rows that an earlier import had written for the same buckets
    cost: Decimal
    hours_refreshed: int
    earliest: dt.datetime


def _normalized(header: list[str]) -> list[str]:
    return [name.strip().lower().replace(" ", "_") for name in header]


def _header_map(header: list[str]) -> dict[str, int]:
    normalized = _normalized(header)
    found: dict[str, int] = {}
    for field, names in _ALIASES.items():
        for name in names:
            if name in normalized:
                found[field] = normalized.index(name)
                break
    return found


def _parse_time(raw: str, now: dt.datetime) -> dt.datetime:
    raw = raw.strip()
    if not raw:
        raise ValueError("the time is empty")
    if raw.replace(".", "", 1).isdigit():
        value = dt.datetime.fromtimestamp(float(raw), dt.UTC)
    else:
        try:
            value = dt.datetime.fromisoformat(raw.replace(" UTC", "+00:00"))
        except ValueError:
            raise ValueError(f"“{raw}” is not a Unix time or an ISO 8601 date/time") from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
    if not EARLIEST <= value <= now + dt.timedelta(days=1):
        raise ValueError(f"{value:%Y-%m-%d %H:%M} is outside the plausible range")
    return value


def _parse_int(raw: str, name: str, *, required: bool) -> int:
    raw = raw.strip()
    if not raw:
        if required:
            raise ValueError(f"{name} is empty")
        return 0
    try:
        value = int(Decimal(raw))
    except (InvalidOperation, ValueError):
        raise ValueError(f"{name} “{raw}” is not a whole number") from None
    if value != Decimal(raw):
        raise ValueError(f"{name} “{raw}” is not a whole number")
    if value < 0:
        raise ValueError(f"{name} is negative")
    if value > MAX_TOKENS:
        raise ValueError(f"{name} {value} is too large for one row; export smaller buckets")
    return value


def _parse_cost(raw: str) -> Decimal | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"cost “{raw}” is not a number") from None
    if not value.is_finite():
        raise ValueError(f"cost “{raw}” is not a number")
    if value < 0:
        raise ValueError("negative amounts (credits, refunds) are not imported")
    if value >= Decimal(10) ** 10:
        raise ValueError(f"cost {value} is implausibly large")
    return value.quantize(Decimal("0.00000001"))


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("", "false", "0", "no", "none", "null"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise ValueError(f"batch “{raw}” is not true or false")


def _openai_provider(organization: Organization) -> Provider | None:
    return Provider.objects.filter(organization=organization, kind=ProviderKind.OPENAI).order_by("pk").first()


def usage_import(
    *,
    organization: Organization,
    project: Project,
    content: bytes,
    file_name: str = "",
    now: dt.datetime | None = None,
) -> ImportResult:
    """Import an OpenAI usage or cost CSV into ``project``'s ledger, all rows or none.

    Every row is checked before anything is written; any problem raises
    ``ImportRejected`` listing every bad line. Then the rows are inserted,
    replacing those an earlier import wrote for the same buckets, and the
    touched hours re-rolled up, in one transaction.
    """
    if project.organization_id != organization.pk:
        raise ValueError("the project belongs to another organisation")
    now = now or timezone.now()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRejected([ImportProblem(1, "The file is not UTF-8 text; export it again as CSV.")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise ImportRejected([ImportProblem(1, "The file is empty.")])
    columns = _header_map(header)
    required: tuple[str, ...]
    if {"input", "output"} <= columns.keys():
        kind = ImportFormat.USAGE
        required = ("time", "model", "input", "output")
    elif "cost" in columns:
        kind = ImportFormat.COSTS
        required = ("time", "cost")
    else:
        raise ImportRejected(
            [
                ImportProblem(
                    1,
                    "Unrecognised header: expected OpenAI usage columns (start_time, model, input_tokens, "
                    "output_tokens, …) or cost columns (start_time, amount.value, line_item, …).",
                )
            ]
        )
    missing = [_ALIASES[field][0] for field in required if field not in columns]
    if missing:
        raise ImportRejected([ImportProblem(1, f"Missing column(s): {', '.join(missing)}.")])

    identity_columns = sorted(
        (name, index) for index, name in enumerate(_normalized(header)) if name and name not in _NOT_IDENTITY
    )
    first_line: dict[str, int] = {}
    provider = _openai_provider(organization)
    prices = PriceBook(organization)
    entries: list[LedgerEntry] = []
    errors: list[ImportProblem] = []
    line = reader.line_num  # physical lines so far: a quoted cell may span several
    for row in reader:
        line_start, line = line + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(entries) + len(errors) >= MAX_IMPORT_ROWS:
            errors.append(ImportProblem(line_start, f"More than {MAX_IMPORT_ROWS} rows; split the file."))
            break
        if len(row) != len(header):
            errors.append(ImportProblem(line_start, f"Expected {len(header)} columns, found {len(row)}."))
            continue
        try:
            entry = _entry_from_row(
                row,
                columns,
                kind=kind,
                organization=organization,
                project=project,
                provider=provider,
                prices=prices,
                now=now,
                file_name=file_name,
            )
        except ValueError as exc:
            errors.append(ImportProblem(line_start, str(exc)))
            continue
        entry.request_id = _import_request_id(
            organization=organization,
            kind=kind,
            bucket=entry.created_at,
            cells=[(name, _identity_cell(name, row[index])) for name, index in identity_columns],
        )
        if entry.request_id in first_line:
            errors.append(
                ImportProblem(line_start, f"the same bucket and columns as line {first_line[entry.request_id]}")
            )
            continue
        first_line[entry.request_id] = line_start
        entries.append(entry)
    if errors:
        raise ImportRejected(errors)
    if not entries:
        raise ImportRejected([ImportProblem(2, "The file has a header but no rows.")])

    with transaction.atomic():
        existing = sum(_stored(entries[i : i + 5000]) for i in range(0, len(entries), 5000))
        # An earlier import's row for the same bucket is overwritten, ingested_at included, so the
        # roll-up refresh below recomputes its hour (and the hour it left, if the bucket moved project).
        LedgerEntry.objects.bulk_create(
            entries,
            batch_size=2000,
            update_conflicts=True,
            # The ledger's unique key is (request_id, created_at): it is partitioned on the time. A
            # bucket's request id names its start, which is its created_at, so this is the same key.
            unique_fields=["request_id", "created_at"],
            update_fields=_REIMPORT_FIELDS,
        )
        hours = rollups_refresh()
    return ImportResult(
        format=kind,
        rows=len(entries),
        created=len(entries) - existing,
        replaced=existing,
        cost=sum((entry.cost for entry in entries), Decimal(0)),
        hours_refreshed=hours,
        earliest=min(entry.created_at for entry in entries),
    )


def _stored(entries: list[LedgerEntry]) -> int:
    """How many of ``entries`` the ledger holds already. By time and request id: the ledger's key starts
    with the time (ledger 0019), and an import's few bucket starts narrow it to a few index ranges."""
    keys = {(entry.created_at, entry.request_id) for entry in entries}
    stored = LedgerEntry.objects.filter(
        created_at__in={created_at for created_at, _id in keys}, request_id__in=[request_id for _at, request_id in keys]
    ).values_list("created_at", "request_id")
    return sum(key in keys for key in stored)


_REIMPORT_FIELDS = [
    "ingested_at",
    "project",
    "provider",
    "end_user",
    "requested_model",
    "served_model",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "request_count",
    "cost",
    "counterfactual_cost",
    "route",
]


def _identity_cell(name: str, raw: str) -> str:
    """A cell as it identifies a bucket: ``batch`` by its truth value, the rest stripped."""
    if name in _ALIASES["batch"]:
        return "true" if _parse_bool(raw) else "false"
    return raw.strip()


def _import_request_id(
    *, organization: Organization, kind: str, bucket: dt.datetime, cells: list[tuple[str, str]]
) -> str:
    """The ledger request id of an imported row: the same for the same bucket whichever file brings it."""
    identity = [str(organization.pk), kind, bucket.astimezone(dt.UTC).isoformat()]
    identity.extend(f"{name}={value}" for name, value in cells)
    return "imp-" + hashlib.sha256("\x1f".join(identity).encode()).hexdigest()[:40]


def _entry_from_row(
    row: list[str],
    columns: dict[str, int],
    *,
    kind: str,
    organization: Organization,
    project: Project,
    provider: Provider | None,
    prices: PriceBook,
    now: dt.datetime,
    file_name: str,
) -> LedgerEntry:
    """The row as an imported ledger entry, without its request id; ``ValueError`` lists its problems."""

    def cell(field: str) -> str:
        return row[columns[field]] if field in columns else ""

    problems: list[str] = []

    def attempt(parse: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return parse(*args, **kwargs)
        except ValueError as exc:
            problems.append(str(exc))
            return None

    created_at = attempt(_parse_time, cell("time"), now)
    cost = attempt(_parse_cost, cell("cost"))
    currency = cell("currency").strip().lower()
    if currency not in ("", "usd"):
        problems.append(f"currency “{currency}” is not USD")
    batch = attempt(_parse_bool, cell("batch")) or False
    if kind == ImportFormat.USAGE:
        model = cell("model").strip()
        if not model:
            problems.append("model is empty")
        prompt = attempt(_parse_int, cell("input"), "input_tokens", required=True)
        cached = attempt(_parse_int, cell("cached"), "input_cached_tokens", required=False)
        completion = attempt(_parse_int, cell("output"), "output_tokens", required=True)
        requests = (
            attempt(_parse_int, cell("requests"), "num_model_requests", required=False)
            if cell("requests").strip()
            else None
        )
        if prompt is not None and cached is not None and cached > prompt:
            problems.append("input_cached_tokens is larger than input_tokens")
    else:
        model = cell("line_item").split(",")[0].strip() or "unattributed"
        prompt = cached = completion = 0
        requests = None
        if cost is None and not problems:
            problems.append("the cost is empty")
    if cost is None and not problems and created_at is not None:
        price = prices.lookup(model=model, day=created_at.date(), provider_id=provider.pk if provider else None)
        if price is None:
            problems.append(f"no price known for model “{model}”: add one under Providers or include a cost column")
        else:
            in_rate, out_rate = (price.batch_input, price.batch_output) if batch else (price.input, price.output)
            cost = (
                token_cost(
                    prompt_tokens=prompt,
                    cached_tokens=cached,
                    completion_tokens=completion,
                    input_rate=in_rate,
                    cached_input_rate=price.cached,
                    output_rate=out_rate,
                )
                / MTOK
            ).quantize(Decimal("0.00000001"))
    if problems:
        raise ValueError("; ".join(problems))
    details = [f"imported from {file_name or 'an OpenAI export'}"]
    if requests:
        details.append(f"{requests} requests")
    for field, label in (("project", "OpenAI project"), ("key", "OpenAI key")):
        if cell(field).strip():
            details.append(f"{label} {cell(field).strip()}")
    if batch:
        details.append("batch")
    return LedgerEntry(
        created_at=created_at,
        source=Source.IMPORTED,
        organization=organization,
        project=project,
        provider=provider,
        endpoint="imported",
        end_user=cell("user").strip()[:200],
        requested_model=model[:200],
        served_model=model[:200],
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        cost=cost,
        counterfactual_cost=cost,
        # A bucket stands for the requests it counted; one without a count (a cost row) for one.
        request_count=1 if requests is None else requests,
        status_code=200,
        route="; ".join(details)[:300],
    )
