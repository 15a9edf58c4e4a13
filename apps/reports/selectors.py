"""Reads for finance: the monthly report, and the rows of every CSV export.

Every read takes ``projects``, a queryset of the projects the caller may see
inside one organisation (``visible_projects``), and filters by it as a
subquery, so scoping never costs an extra query and never loads ids.
Time ranges are ``since`` inclusive, ``until`` exclusive, in UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TypedDict

import orjson
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Aggregate, Count, F, Q, QuerySet, Sum
from django.db.models.functions import Trunc, TruncHour

from apps.core.catalog import OPENAI_PRICES
from apps.core.pricing import MTOK
from apps.ledger.models import HourlyRollup, LedgerEntry, Source
from apps.ledger.selectors import ledger_export_rows
from apps.providers.models import Price
from apps.reports.models import ExportJob
from apps.tenancy.models import Organization, Project
from apps.tenancy.selectors import projects_for

ZERO = Decimal(0)
EXPORT_CHUNK_SIZE = 2000


def visible_projects(
    *, user: User | AnonymousUser, organization: Organization, project_slug: str = ""
) -> QuerySet[Project]:
    """The organisation's projects ``user`` may see (all for owners and finance, a team's for developers)."""
    projects = projects_for(user=user).filter(organization=organization)
    if project_slug:
        projects = projects.filter(slug=project_slug)
    return projects


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Start of ``month`` and of the next one, UTC."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    following = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, following


# Monthly report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendLine:
    """Spend of one slice (a project, a model, a feature) over the report's range."""

    key: str
    label: str
    requests: int
    tokens: int
    cost: Decimal
    counterfactual: Decimal
    imported_cost: Decimal = ZERO

    @property
    def savings(self) -> Decimal:
        return self.counterfactual - self.cost

    @property
    def gateway_cost(self) -> Decimal:
        return self.cost - self.imported_cost


@dataclass(frozen=True)
class MonthlyReport:
    since: dt.datetime
    until: dt.datetime
    by_project: list[SpendLine]
    by_model: list[SpendLine]
    by_feature: list[SpendLine]
    totals: SpendLine
    share_imported: float = field(default=0.0)


def _rollup_lines(rows: QuerySet[HourlyRollup], key: str, label: str | None = None) -> list[SpendLine]:
    grouped = (
        rows.values(*{key, label or key})
        .annotate(
            total_requests=Sum("requests"),
            total_tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            total_cost=Sum("cost"),
            total_counterfactual=Sum("counterfactual_cost"),
        )
        .order_by("-total_cost", key)
    )
    return [
        SpendLine(
            key=str(row[key]),
            label=str(row[label or key]),
            requests=row["total_requests"] or 0,
            tokens=row["total_tokens"] or 0,
            cost=row["total_cost"] or ZERO,
            counterfactual=row["total_counterfactual"] or ZERO,
        )
        for row in grouped
    ]


def monthly_report(*, organization: Organization, projects: QuerySet[Project], month: dt.date) -> MonthlyReport:
    """Spend by project, model and feature for one month, from the hourly roll-ups; four queries.

    Roll-ups do not record where a row came from, so imported spend is read
    from the ledger, restricted to imported rows (few: one per day and model
    of an imported usage file).
    """
    since, until = month_bounds(month)
    rollups = HourlyRollup.objects.filter(
        organization=organization, project__in=projects.values("pk"), hour__gte=since, hour__lt=until
    )
    imported = dict(
        LedgerEntry.objects.filter(
            organization=organization,
            project__in=projects.values("pk"),
            source=Source.IMPORTED,
            created_at__gte=since,
            created_at__lt=until,
        )
        .values("project__slug")
        .annotate(total=Sum("cost"))
        .order_by()
        .values_list("project__slug", "total")
    )
    by_project = [
        replace(line, imported_cost=imported.get(line.key) or ZERO)
        for line in _rollup_lines(rollups, "project__slug", "project__name")
    ]
    totals = SpendLine(
        key="total",
        label="Total",
        requests=sum(line.requests for line in by_project),
        tokens=sum(line.tokens for line in by_project),
        cost=sum((line.cost for line in by_project), ZERO),
        counterfactual=sum((line.counterfactual for line in by_project), ZERO),
        imported_cost=sum((line.imported_cost for line in by_project), ZERO),
    )
    return MonthlyReport(
        since=since,
        until=until,
        by_project=by_project,
        by_model=_rollup_lines(rollups, "served_model"),
        by_feature=_rollup_lines(rollups, "feature"),
        totals=totals,
        share_imported=float(totals.imported_cost / totals.cost) if totals.cost else 0.0,
    )


def recent_export_jobs(*, user: User | AnonymousUser, organization: Organization, limit: int = 5) -> list[ExportJob]:
    if not user.is_authenticated:
        return []
    return list(ExportJob.objects.filter(requested_by=user, organization=organization).order_by("-created_at")[:limit])


# Ledger rows --------------------------------------------------------------------------------------

LEDGER_CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "request_id"),
    ("created_at", "created_at"),
    ("source", "source"),
    ("project", "project__slug"),
    ("key", "api_key__lookup_id"),
    ("provider", "provider__name"),
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
    ("usage_estimated", "usage_estimated"),
    ("possibly_billed", "possibly_billed"),
)


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
    return ledger_export_rows(
        entries=entries.order_by("created_at", "id"), chunk_size=chunk_size, columns=LEDGER_CSV_COLUMNS
    )


# Aggregated roll-ups ------------------------------------------------------------------------------

GROUPINGS = ("project", "model", "feature", "key", "end_user")
BUCKETS = ("hour", "day", "month")
_ROLLUP_FIELDS = {
    "project": "project__slug",
    "model": "served_model",
    "feature": "feature",
    "key": "api_key__lookup_id",
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
            "m_requests": Count("id"),
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


# FOCUS --------------------------------------------------------------------------------------------
#
# One FOCUS row per (hour, project, provider, served model, requested model,
# feature, end user, key, route, source) and token type: uncached input,
# cached input, output. The ledger stores one cost per request, not per token
# type, so a slice's cost is split across its token types in proportion to
# what each type costs at the served model's price (the last type takes the
# rounding remainder, so BilledCost sums to the ledger's cost exactly).
# ListCost is the counterfactual (requested model, no cache), split the same
# way at the requested model's price; ContractedCost is the price sheet rate
# times the tokens. ListUnitPrice stays empty: the list reference is another
# model's price, so no single unit price multiplies out to ListCost.

FOCUS_COLUMNS = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ListUnitPrice",
    "ContractedCost",
    "ContractedUnitPrice",
    "BillingCurrency",
    "BillingAccountId",
    "BillingAccountName",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ServiceName",
    "ServiceCategory",
    "ServiceSubcategory",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "SkuId",
    "SkuPriceId",
    "SkuMeter",
    "PricingCategory",
    "PricingUnit",
    "PricingQuantity",
    "ConsumedQuantity",
    "ConsumedUnit",
    "RegionId",
    "RegionName",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
)

_FOCUS_GROUP = (
    "hour",
    "project__slug",
    "project__name",
    "provider_id",
    "provider__name",
    "served_model",
    "requested_model",
    "feature",
    "end_user",
    "api_key__lookup_id",
    "route",
    "source",
)
_DATED_MODEL = re.compile(r"-\d{4}-\d{2}-\d{2}$")
TOKEN_TYPES = (("input", "Input tokens"), ("cached", "Cached input tokens"), ("output", "Output tokens"))


@dataclass(frozen=True)
class UnitPrices:
    """USD per 1M tokens, and where they came from (for SkuPriceId)."""

    input: Decimal
    cached: Decimal
    output: Decimal
    batch_input: Decimal
    batch_output: Decimal
    ref: str


class PriceBook:
    """Every price of one organisation, loaded once; falls back to the public catalogue."""

    def __init__(self, organization: Organization) -> None:
        self._rows: dict[tuple[int, str], list[Price]] = {}
        self._any: dict[str, list[Price]] = {}
        prices = Price.objects.filter(provider__organization=organization).order_by("-effective_from", "provider_id")
        for price in prices:
            self._rows.setdefault((price.provider_id, price.model), []).append(price)
            self._any.setdefault(price.model, []).append(price)

    def lookup(self, *, model: str, day: dt.date, provider_id: int | None = None) -> UnitPrices | None:
        """The price in effect on ``day``: this provider's, else any of the organisation's, else the catalogue."""
        for name in dict.fromkeys((model, _DATED_MODEL.sub("", model))):
            candidates = self._rows.get((provider_id, name), []) if provider_id else []
            for price in [*candidates, *self._any.get(name, [])]:
                if price.effective_from <= day:
                    return UnitPrices(
                        price.input_per_mtok,
                        price.cached_input_per_mtok,
                        price.output_per_mtok,
                        price.batch_input_per_mtok,
                        price.batch_output_per_mtok,
                        f"price-{price.pk}",
                    )
            if name in OPENAI_PRICES:
                values = OPENAI_PRICES[name]
                return UnitPrices(*values, ref="catalog")
        return None


def allocate(total: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """Split ``total`` in proportion to ``weights`` at 8 decimals; the parts sum to ``total`` exactly."""
    if not weights:
        return []
    weight_sum = sum(weights, ZERO)
    if weight_sum <= 0:
        weights, weight_sum = [Decimal(1)] * len(weights), Decimal(len(weights))
    quantum = Decimal("0.00000001")
    parts = [(total * w / weight_sum).quantize(quantum) for w in weights[:-1]]
    return [*parts, total - sum(parts, ZERO)]


def focus_groups(
    *, organization: Organization, projects: QuerySet[Project], since: dt.datetime, until: dt.datetime
) -> QuerySet[Any]:
    return (
        ledger_range(organization=organization, projects=projects, since=since, until=until)
        .annotate(hour=TruncHour("created_at", tzinfo=dt.UTC))
        .values(*_FOCUS_GROUP)
        .annotate(
            prompt=Sum("prompt_tokens"),
            cached=Sum("cached_tokens"),
            completion=Sum("completion_tokens"),
            total_cost=Sum("cost"),
            total_counterfactual=Sum("counterfactual_cost"),
        )
        .order_by(*_FOCUS_GROUP)
    )


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _billing_period(hour: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    return month_bounds(hour.date())


def focus_csv_rows(
    *, organization: Organization, groups: QuerySet[Any], chunk_size: int = EXPORT_CHUNK_SIZE
) -> Iterator[tuple[Any, ...]]:
    """A FOCUS 1.2 header, then up to three rows (input, cached, output tokens) per ledger slice."""
    yield FOCUS_COLUMNS
    prices = PriceBook(organization)
    for group in groups.iterator(chunk_size=chunk_size):
        yield from _focus_rows(organization, group, prices)


def _focus_rows(organization: Organization, group: dict[str, Any], prices: PriceBook) -> Iterator[tuple[Any, ...]]:
    hour: dt.datetime = group["hour"]
    prompt, cached, completion = group["prompt"] or 0, group["cached"] or 0, group["completion"] or 0
    cost, counterfactual = group["total_cost"] or ZERO, group["total_counterfactual"] or ZERO
    quantities = [max(prompt - cached, 0), cached, completion]
    kept = [i for i, quantity in enumerate(quantities) if quantity]
    if not kept:
        if not cost and not counterfactual:
            return  # errors and empty rows: nothing consumed, nothing billed
        kept = [0]
    model = group["served_model"] or group["requested_model"]
    served = prices.lookup(model=model, day=hour.date(), provider_id=group["provider_id"])
    requested = prices.lookup(model=group["requested_model"], day=hour.date(), provider_id=group["provider_id"])
    tokens = [Decimal(quantities[i]) for i in kept]
    served_rates = [served.input, served.cached, served.output] if served else None
    # The counterfactual had no cache: cached tokens count at the full input price.
    requested_rates = [requested.input, requested.input, requested.output] if requested else None
    billed = allocate(
        cost, [q * served_rates[i] for q, i in zip(tokens, kept, strict=True)] if served_rates else tokens
    )
    listed = allocate(
        counterfactual,
        [q * requested_rates[i] for q, i in zip(tokens, kept, strict=True)] if requested_rates else tokens,
    )
    billing_start, billing_end = _billing_period(hour)
    provider_name = group["provider__name"] or ("OpenAI" if group["source"] == Source.IMPORTED else "CostControl cache")
    slug = group["project__slug"] or ""
    key = group["api_key__lookup_id"]
    tags = {
        name: value
        for name, value in (
            ("feature", group["feature"]),
            ("end_user", group["end_user"]),
            ("key", f"cc_live_{key}" if key else ""),
            ("route", group["route"]),
            ("requested_model", group["requested_model"]),
            ("source", group["source"]),
        )
        if value
    }
    tags_json = orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode()
    for position, index in enumerate(kept):
        token_type, meter = TOKEN_TYPES[index]
        quantity = tokens[position]
        rate = served_rates[index] if served_rates else None
        contracted = (quantity * rate / MTOK).quantize(Decimal("0.00000001")) if rate is not None else billed[position]
        sku = f"{model}:{token_type}"
        yield (
            _decimal(billed[position]),
            _decimal(billed[position]),
            _decimal(listed[position]),
            "",
            _decimal(contracted),
            _decimal(rate) if rate is not None else "",
            "USD",
            organization.slug,
            organization.name,
            billing_start.isoformat(),
            billing_end.isoformat(),
            hour.isoformat(),
            (hour + dt.timedelta(hours=1)).isoformat(),
            "Usage",
            "",
            f"{meter} of {model} for project {slug}",
            "Usage-Based",
            f"{provider_name} API",
            "AI and Machine Learning",
            "Generative AI",
            provider_name,
            provider_name,
            provider_name,
            f"{slug}/{model}",
            model,
            "Model",
            sku,
            f"{sku}@{served.ref}" if served else "",
            meter,
            "Standard",
            "1M Tokens",
            _decimal(quantity / MTOK),
            int(quantity),
            "Tokens",
            "",
            "",
            slug,
            group["project__name"] or "",
            "Project",
            tags_json,
        )


# One entry point for the views and the export worker ---------------------------------------------


@dataclass(frozen=True)
class ExportQuery:
    """What to export: a time range, optionally one project, and (roll-ups) a grouping and bucket."""

    since: dt.datetime
    until: dt.datetime
    project: str = ""
    group_by: tuple[str, ...] = ("project", "model")
    bucket: str = "day"

    def to_params(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "project": self.project,
            "group_by": list(self.group_by),
            "bucket": self.bucket,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExportQuery:
        return cls(
            since=dt.datetime.fromisoformat(params["since"]),
            until=dt.datetime.fromisoformat(params["until"]),
            project=params.get("project") or "",
            group_by=tuple(params.get("group_by") or ()),
            bucket=params.get("bucket") or "day",
        )


class _ExportScope(TypedDict):
    """The arguments every export's selector shares."""

    organization: Organization
    projects: QuerySet[Project]
    since: dt.datetime
    until: dt.datetime


def export_rows(
    *, kind: str, user: User | AnonymousUser, organization: Organization, query: ExportQuery
) -> tuple[Iterator[tuple[Any, ...]], QuerySet[Any]]:
    """The CSV rows (header first) of one export, and the queryset whose count sizes it."""
    projects = visible_projects(user=user, organization=organization, project_slug=query.project)
    scope: _ExportScope = {
        "organization": organization,
        "projects": projects,
        "since": query.since,
        "until": query.until,
    }
    if kind == "ledger":
        entries = ledger_range(**scope)
        return ledger_csv_rows(entries=entries), entries
    if kind == "rollups":
        groups = rollup_groups(**scope, group_by=list(query.group_by), bucket=query.bucket)
        return rollup_csv_rows(groups=groups, group_by=list(query.group_by)), groups
    if kind == "focus":
        groups = focus_groups(**scope)
        return focus_csv_rows(organization=organization, groups=groups), groups
    raise ValueError(f"unknown export kind {kind!r}")
