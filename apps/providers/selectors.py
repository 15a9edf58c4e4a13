"""Reads of providers, prices and aliases, scoped by organisation membership; an organisation's price book."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Prefetch, QuerySet

from apps.core.catalog import ANTHROPIC_CACHE_WRITE_PRICES, ANTHROPIC_PRICES, OPENAI_PRICES
from apps.providers.models import ModelAlias, Price, Provider
from apps.tenancy.models import Organization, Project
from apps.tenancy.selectors import organizations_for


def providers_for(*, user: User | AnonymousUser) -> QuerySet[Provider]:
    """Providers of every organisation ``user`` belongs to."""
    return (
        Provider.objects.filter(organization__in=organizations_for(user=user).values("pk"))
        .select_related("organization")
        .order_by("organization__name", "name")
    )


def providers_with_prices(*, organization: Organization) -> QuerySet[Provider]:
    """The organisation's providers, each with its prices (newest first per model) in one extra query."""
    return (
        Provider.objects.filter(organization=organization)
        .order_by("name")
        .prefetch_related(Prefetch("prices", queryset=Price.objects.order_by("model", "-effective_from")))
    )


def prices_for(*, user: User | AnonymousUser) -> QuerySet[Price]:
    return (
        Price.objects.filter(provider__in=providers_for(user=user).values("pk"))
        .select_related("provider")
        .order_by("provider_id", "model", "-effective_from")
    )


def aliases_for(*, project: Project) -> QuerySet[ModelAlias]:
    return ModelAlias.objects.filter(project=project).select_related("provider").order_by("alias")


_DATED_MODEL = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class UnitPrices:
    """USD per 1M tokens, and where they came from (for SkuPriceId)."""

    input: Decimal
    cached: Decimal
    output: Decimal
    batch_input: Decimal
    batch_output: Decimal
    ref: str
    cache_write: Decimal | None = None  # prompt-cache writes; None: the input price


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
                        price.cache_write_per_mtok,
                    )
            if name in OPENAI_PRICES:
                values = OPENAI_PRICES[name]
                return UnitPrices(*values, ref="catalog")
            if name in ANTHROPIC_PRICES:
                return UnitPrices(
                    *ANTHROPIC_PRICES[name], ref="catalog", cache_write=ANTHROPIC_CACHE_WRITE_PRICES[name]
                )
        return None
