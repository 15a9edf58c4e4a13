"""Registering providers, setting prices and model aliases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_saved, audit_snapshot, audit_stored
from apps.core.catalog import (
    ANTHROPIC_CACHE_WRITE_PRICES,
    ANTHROPIC_PRICES,
    CATALOG,
    CATALOG_EFFECTIVE_FROM,
    ModelEntry,
)
from apps.core.egress import url_origin
from apps.core.pricing import TIER_BATCH, TIER_FLEX, TIER_PRIORITY, TIER_STANDARD, LongContext
from apps.providers.models import ModelAlias, Price, Provider, ProviderKind
from apps.tenancy.models import Organization, Project
from costcontrol.egress import egress_check


def provider_create(
    *,
    organization: Organization,
    name: str,
    kind: str,
    base_url: str,
    secret: str = "",
    seed_catalog: bool | None = None,
    responses_api: bool = True,
) -> Provider:
    """Register a provider; OpenAI, Anthropic and the simulators get their vendor's public price catalogue
    by default."""
    provider = Provider(
        organization=organization, name=name, kind=kind, base_url=base_url.rstrip("/"), responses_api=responses_api
    )
    simulated = kind in {ProviderKind.SIMULATED, ProviderKind.SIMULATED_ANTHROPIC}
    # The simulator wants a key like the vendor it stands in for does; any value works.
    provider.secret = secret or ("sk-simulated" if simulated else "")
    provider.full_clean()
    _check_egress(provider.base_url)
    anthropic = kind in {ProviderKind.ANTHROPIC, ProviderKind.SIMULATED_ANTHROPIC}
    catalogue_size = len(ANTHROPIC_PRICES if anthropic else CATALOG)
    if seed_catalog is None:
        seed_catalog = anthropic or kind in {ProviderKind.OPENAI, ProviderKind.SIMULATED}
    with transaction.atomic():
        provider.save()
        if seed_catalog:
            Price.objects.bulk_create(
                [
                    Price(
                        provider=provider,
                        model=model,
                        input_per_mtok=values[0],
                        cached_input_per_mtok=values[1],
                        output_per_mtok=values[2],
                        batch_input_per_mtok=values[3],
                        batch_output_per_mtok=values[4],
                        cache_write_per_mtok=ANTHROPIC_CACHE_WRITE_PRICES.get(model),
                        effective_from=CATALOG_EFFECTIVE_FROM,
                    )
                    for model, values in ANTHROPIC_PRICES.items()
                ]
                if anthropic
                else [
                    Price(provider=provider, model=model, effective_from=CATALOG_EFFECTIVE_FROM, **price_columns(entry))
                    for model, entry in CATALOG.items()
                ]
            )
        audit_record(
            action=AuditAction.CREATE,
            obj=provider,
            after=audit_snapshot(provider, catalogue_prices=catalogue_size if seed_catalog else 0),
        )
    return provider


# A price column's value: a rate (USD per 1M tokens), a long-context factor or token count, or empty.
PriceValue = Decimal | int | None


def price_columns(entry: ModelEntry) -> dict[str, PriceValue]:
    """A catalogue entry as ``Price``'s columns (a tier it does not offer stays empty; batch defaults to standard)."""
    standard = entry.tiers[TIER_STANDARD]
    batch = entry.tiers.get(TIER_BATCH, standard)
    columns: dict[str, PriceValue] = {
        "input_per_mtok": standard.input,
        "cached_input_per_mtok": standard.cached_input,
        "output_per_mtok": standard.output,
        "batch_input_per_mtok": batch.input,
        "batch_output_per_mtok": batch.output,
        "reasoning_per_mtok": entry.reasoning,
    }
    for tier in (TIER_FLEX, TIER_PRIORITY):
        rates = entry.tiers.get(tier)
        columns[f"{tier}_input_per_mtok"] = rates.input if rates else None
        columns[f"{tier}_cached_input_per_mtok"] = rates.cached_input if rates else None
        columns[f"{tier}_output_per_mtok"] = rates.output if rates else None
    long = entry.long_context
    columns["long_context_above_tokens"] = long.above if long else None
    columns["long_context_input_factor"] = long.input_factor if long else None
    columns["long_context_output_factor"] = long.output_factor if long else None
    return columns


def _check_egress(base_url: str) -> None:
    try:
        egress_check(base_url)
    except ValidationError as exc:
        raise ValidationError({"base_url": exc.messages}) from None


def provider_update(
    *,
    provider: Provider,
    name: str,
    base_url: str,
    secret: str | None,
    is_active: bool,
    responses_api: bool | None = None,
) -> Provider:
    """Change a provider; ``secret=None`` keeps the stored one.

    The secret is bound to the base URL's origin (scheme, host, port): moving a provider that has a
    secret to another origin without entering the secret again is refused, so a changed URL can never
    carry the old key to a host it was not given for. A changed URL passes the egress policy.
    """
    base_url = base_url.rstrip("/")
    before = audit_snapshot(provider)
    moved = base_url != provider.base_url
    if moved and secret is None and provider.has_secret and url_origin(base_url) != url_origin(provider.base_url):
        raise ValidationError(
            {
                "secret": "The base URL now points at another host: enter the secret again for it (the stored one "
                "is only ever sent to the host it was entered for)."
            }  # fmt: skip
        )
    provider.name = name
    provider.base_url = base_url
    provider.is_active = is_active
    if responses_api is not None:
        provider.responses_api = responses_api
    if secret is not None:
        provider.secret = secret
    provider.full_clean()
    if moved:
        _check_egress(provider.base_url)
    with transaction.atomic():
        provider.save()
        audit_record(action=AuditAction.UPDATE, obj=provider, before=before, after=audit_snapshot(provider))
    return provider


class KeepLongContext:
    """``price_set``'s default for ``long_context``: keep the model's current long-context rate."""


KEEP_LONG_CONTEXT = KeepLongContext()


def price_set(
    *,
    provider: Provider,
    model: str,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cached_input_per_mtok: Decimal | None = None,
    batch_input_per_mtok: Decimal | None = None,
    batch_output_per_mtok: Decimal | None = None,
    cache_write_per_mtok: Decimal | None = None,
    flex_input_per_mtok: Decimal | None = None,
    flex_cached_input_per_mtok: Decimal | None = None,
    flex_output_per_mtok: Decimal | None = None,
    priority_input_per_mtok: Decimal | None = None,
    priority_cached_input_per_mtok: Decimal | None = None,
    priority_output_per_mtok: Decimal | None = None,
    reasoning_per_mtok: Decimal | None = None,
    long_context: LongContext | None | KeepLongContext = KEEP_LONG_CONTEXT,
    effective_from: dt.date,
) -> Price:
    """Set the price of ``model`` from ``effective_from`` on; earlier ledger rows keep earlier prices.

    A flex or priority tier is priced with all three of its prices or none (then it bills at the standard
    prices); reasoning left empty bills as output. ``long_context``: the rate above a prompt size, None for
    none, or (the default) the one the model's price in effect on ``effective_from`` has, so that setting
    a model's token prices never drops its long-context rate unasked."""
    tiers = {
        "flex": (flex_input_per_mtok, flex_cached_input_per_mtok, flex_output_per_mtok),
        "priority": (priority_input_per_mtok, priority_cached_input_per_mtok, priority_output_per_mtok),
    }
    for tier, rates in tiers.items():
        if any(rate is not None for rate in rates) and any(rate is None for rate in rates):
            raise ValidationError(
                {f"{tier}_input_per_mtok": f"Give all three {tier} prices (input, cached input, output), or none."}
            )
    with transaction.atomic():
        price, before = _price_for_update(provider=provider, model=model, effective_from=effective_from)
        price.input_per_mtok = input_per_mtok
        price.output_per_mtok = output_per_mtok
        price.cached_input_per_mtok = input_per_mtok if cached_input_per_mtok is None else cached_input_per_mtok
        price.batch_input_per_mtok = input_per_mtok if batch_input_per_mtok is None else batch_input_per_mtok
        price.batch_output_per_mtok = output_per_mtok if batch_output_per_mtok is None else batch_output_per_mtok
        price.cache_write_per_mtok = cache_write_per_mtok
        price.flex_input_per_mtok, price.flex_cached_input_per_mtok, price.flex_output_per_mtok = tiers["flex"]
        (price.priority_input_per_mtok, price.priority_cached_input_per_mtok,
         price.priority_output_per_mtok) = tiers["priority"]  # fmt: skip
        price.reasoning_per_mtok = reasoning_per_mtok
        if isinstance(long_context, KeepLongContext):
            current = prices_in_effect(provider=provider, on=effective_from, models=[model]).get(model)
            long_context = current.long_context() if current is not None else None
        price.long_context_above_tokens = long_context.above if long_context else None
        price.long_context_input_factor = long_context.input_factor if long_context else None
        price.long_context_output_factor = long_context.output_factor if long_context else None
        price.full_clean()
        price.save()
        audit_saved(obj=price, before=before)
    return price


def _price_for_update(
    *, provider: Provider, model: str, effective_from: dt.date
) -> tuple[Price, dict[str, Any] | None]:
    """The price row of ``model`` from ``effective_from`` (locked; a new one if none), and its audit "before"."""
    price = (
        Price.objects.select_for_update().filter(provider=provider, model=model, effective_from=effective_from).first()
    )
    before = audit_stored(price)
    return price or Price(provider=provider, model=model, effective_from=effective_from), before


def alias_set(*, project: Project, alias: str, provider: Provider, model: str) -> ModelAlias:
    """Point ``alias`` at ``model`` on ``provider`` for ``project`` (creating or replacing it)."""
    if provider.organization_id != project.organization_id:
        raise ValidationError({"provider": "That provider belongs to another organisation."})
    with transaction.atomic():
        entry = ModelAlias.objects.select_for_update().filter(project=project, alias=alias).first()
        before = audit_stored(entry)
        entry = entry or ModelAlias(project=project, alias=alias)
        entry.provider, entry.model = provider, model
        entry.full_clean()
        entry.save()
        audit_saved(obj=entry, before=before)
    return entry


@transaction.atomic
def alias_delete(*, alias: ModelAlias) -> None:
    audit_record(action=AuditAction.DELETE, obj=alias, before=audit_snapshot(alias))
    alias.delete()


PRICE_COLUMNS = (
    "input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "batch_input_per_mtok", "batch_output_per_mtok",
    "flex_input_per_mtok", "flex_cached_input_per_mtok", "flex_output_per_mtok", "priority_input_per_mtok",
    "priority_cached_input_per_mtok", "priority_output_per_mtok", "reasoning_per_mtok",
    "long_context_above_tokens", "long_context_input_factor", "long_context_output_factor",
)  # fmt: skip


def prices_in_effect(*, provider: Provider, on: dt.date, models: list[str] | None = None) -> dict[str, Price]:
    """``provider``'s price row in effect on ``on`` for each model it prices (only ``models``, if given)."""
    prices = Price.objects.filter(provider=provider, effective_from__lte=on)
    if models is not None:
        prices = prices.filter(model__in=models)
    current: dict[str, Price] = {}
    for price in prices.order_by("model", "-effective_from"):
        current.setdefault(price.model, price)
    return current


def prices_diff(
    *, provider: Provider, catalog: dict[str, ModelEntry], on: dt.date
) -> list[tuple[str, str, dict[str, tuple[PriceValue, PriceValue]]]]:
    """What applying ``catalog`` would change for ``provider``: (model, "new" | "changed", {column: (now, then)})
    for each model whose prices differ from the row in effect on ``on``; unchanged models are left out."""
    current = prices_in_effect(provider=provider, on=on)
    changes: list[tuple[str, str, dict[str, tuple[PriceValue, PriceValue]]]] = []
    for model, entry in sorted(catalog.items()):
        wanted = price_columns(entry)
        row = current.get(model)
        if row is None:
            changes.append((model, "new", {c: (None, wanted[c]) for c in PRICE_COLUMNS if wanted[c] is not None}))
            continue
        differ = {c: (getattr(row, c), wanted[c]) for c in PRICE_COLUMNS if getattr(row, c) != wanted[c]}
        if differ:
            changes.append((model, "changed", differ))
    return changes


def prices_sync(*, provider: Provider, catalog: dict[str, ModelEntry], effective_from: dt.date) -> int:
    """Write ``catalog``'s prices for the models whose prices differ, as rows effective from ``effective_from``
    (earlier ledger rows keep their prices); each row audited. Returns how many rows were written."""
    changed = {model for model, _, _ in prices_diff(provider=provider, catalog=catalog, on=effective_from)}
    with transaction.atomic():
        for model in sorted(changed):
            price, before = _price_for_update(provider=provider, model=model, effective_from=effective_from)
            for column, value in price_columns(catalog[model]).items():
                setattr(price, column, value)
            price.full_clean()
            price.save()
            audit_saved(obj=price, before=before)
    return len(changed)
