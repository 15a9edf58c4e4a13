"""The FOCUS 1.2-shaped export: one row per hour, resource and token type, priced and allocated."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncHour

from apps.core.pricing import MTOK
from apps.ledger.models import Source
from apps.providers.models import KIND_VENDORS
from apps.providers.selectors import PriceBook
from apps.reports.selectors.monthly import month_bounds
from apps.reports.selectors.rows import EXPORT_CHUNK_SIZE, ledger_range
from apps.tenancy.models import Organization, Project

ZERO = Decimal(0)


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
    "provider__kind",
    "served_model",
    "requested_model",
    "feature",
    "end_user",
    "api_key__lookup_id",
    "route",
    "source",
    "endpoint",
    "service_tier",
)


TOKEN_TYPES = (
    ("input", "Input tokens"),
    ("cached", "Cached input tokens"),
    ("cache_write", "Cache write input tokens"),
    ("output", "Output tokens"),
)


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
            written=Sum("cache_write_tokens"),
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
    """A FOCUS 1.2 header, then up to four rows (input, cached, cache-write, output tokens) per ledger slice."""
    yield FOCUS_COLUMNS
    prices = PriceBook(organization)
    for group in groups.iterator(chunk_size=chunk_size):
        yield from _focus_rows(organization, group, prices)


def _focus_rows(organization: Organization, group: dict[str, Any], prices: PriceBook) -> Iterator[tuple[Any, ...]]:
    hour: dt.datetime = group["hour"]
    prompt, cached, completion = group["prompt"] or 0, group["cached"] or 0, group["completion"] or 0
    written = group["written"] or 0
    cost, counterfactual = group["total_cost"] or ZERO, group["total_counterfactual"] or ZERO
    quantities = [max(prompt - cached - written, 0), cached, written, completion]
    kept = [i for i, quantity in enumerate(quantities) if quantity]
    if not kept:
        if not cost and not counterfactual:
            return  # errors and empty rows: nothing consumed, nothing billed
        kept = [0]
    model = group["served_model"] or group["requested_model"]
    served = prices.lookup(model=model, day=hour.date(), provider_id=group["provider_id"])
    requested = prices.lookup(model=group["requested_model"], day=hour.date(), provider_id=group["provider_id"])
    tokens = [Decimal(quantities[i]) for i in kept]
    # The price book holds standard rates: a flex or priority slice has no list unit price to show.
    standard = group["service_tier"] in ("standard", "batch")
    served_rates = None
    if served is not None and standard:
        write_rate = served.input if served.cache_write is None else served.cache_write
        served_rates = [served.input, served.cached, write_rate, served.output]
    # The counterfactual had no cache: cached and written tokens count at the full input price.
    requested_rates = [requested.input, requested.input, requested.input, requested.output] if requested else None
    billed = allocate(
        cost, [q * served_rates[i] for q, i in zip(tokens, kept, strict=True)] if served_rates else tokens
    )
    listed = allocate(
        counterfactual,
        [q * requested_rates[i] for q, i in zip(tokens, kept, strict=True)] if requested_rates else tokens,
    )
    billing_start, billing_end = _billing_period(hour)
    provider_name = group["provider__name"] or ("OpenAI" if group["source"] == Source.IMPORTED else "CostControl cache")
    # The vendor (OpenAI, Anthropic) publishes the model and provides the service; the provider as configured
    # here (its name) is who invoices it.
    vendor = KIND_VENDORS.get(group["provider__kind"], provider_name)
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
            ("endpoint", group["endpoint"]),
            ("service_tier", group["service_tier"]),
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
            f"{vendor} API",
            "AI and Machine Learning",
            "Generative AI",
            vendor,
            vendor,
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
