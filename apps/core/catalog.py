"""The public price catalogue, kept as data: ``apps/core/data/catalog.json``.

One entry per model: its context window, its largest output (the worst case a
budget reserves when a request sets no output cap) and its prices in USD per 1M
tokens per service tier (``standard``, ``batch``, and ``flex``/``priority`` where
offered), each with input, cached-input and output rates, plus ``reasoning`` where
a provider prices reasoning tokens apart from output, and ``long_context`` (``above_input_tokens``,
``input_factor``, ``output_factor``) where a model bills long prompts at dearer rates. Figures are OpenAI's list
prices as recorded on the date the file states; they seed new providers, and
``manage.py sync_prices FILE`` compares a newer prices file (this format, or CSV)
with what providers hold and applies it as new price rows.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from apps.core.pricing import TIER_BATCH, TIER_FLEX, TIER_PRIORITY, TIER_STANDARD, LongContext, TierRates

CATALOG_PATH = Path(__file__).with_name("data") / "catalog.json"
PRICED_TIERS = (TIER_STANDARD, TIER_BATCH, TIER_FLEX, TIER_PRIORITY)


class CatalogError(ValueError):
    """A prices file that cannot be read as a catalogue (the message says where)."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of a catalogue: limits and rates per tier (USD per 1M tokens)."""

    context_window: int
    max_output: int
    tiers: dict[str, TierRates] = field(default_factory=dict)  # always has "standard"
    reasoning: Decimal | None = None
    long_context: LongContext | None = None


# The largest token count a catalogue (and a price's long-context size) may name, and the range of a
# long-context multiplier; the price form and API hold their fields to the same bounds.
MAX_TOKEN_COUNT = 100_000_000
FACTOR_MIN, FACTOR_MAX = Decimal(1), Decimal(100)


def _money(value: Any, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise CatalogError(f"{where}: {value!r} is not a number") from None
    if not amount.is_finite() or amount < 0 or amount >= 10**8:
        raise CatalogError(f"{where}: {value!r} is not a price (0 to 99,999,999.999999)")
    return amount


def _factor(value: Any, where: str) -> Decimal:
    try:
        factor = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise CatalogError(f"{where}: {value!r} is not a number") from None
    if not factor.is_finite() or not FACTOR_MIN <= factor <= FACTOR_MAX or factor != factor.quantize(Decimal("0.001")):
        raise CatalogError(f"{where}: {value!r} is not a multiplier (1 to 100, at most 3 decimals)")
    return factor


def _long_context(raw: Any, where: str) -> LongContext | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected an object with above_input_tokens, input_factor and output_factor")
    above = _count(raw.get("above_input_tokens"), f"{where}.above_input_tokens")
    return LongContext(
        above, _factor(raw.get("input_factor"), f"{where}.input_factor"),
        _factor(raw.get("output_factor"), f"{where}.output_factor"),
    )  # fmt: skip


def _count(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
        raise CatalogError(f"{where}: {value!r} is not a token count")
    return value


def parse_entry(model: str, raw: Any) -> ModelEntry:
    """A model's entry from its JSON object; ``CatalogError`` on anything missing or wrong."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{model}: expected an object")
    tiers = {}
    for tier in PRICED_TIERS:
        rates = raw.get(tier)
        if rates is None:
            continue
        if not isinstance(rates, dict):
            raise CatalogError(f"{model}.{tier}: expected an object with input, cached_input and output")
        at = f"{model}.{tier}"
        inp = _money(rates.get("input"), f"{at}.input")
        tiers[tier] = TierRates(
            inp,
            _money(rates.get("cached_input", inp), f"{at}.cached_input"),
            _money(rates.get("output", 0), f"{at}.output"),
        )
    if TIER_STANDARD not in tiers:
        raise CatalogError(f"{model}: no standard prices")
    reasoning = raw.get("reasoning")
    return ModelEntry(
        context_window=_count(raw.get("context_window"), f"{model}.context_window"),
        max_output=_count(raw.get("max_output"), f"{model}.max_output"),
        tiers=tiers,
        reasoning=None if reasoning is None else _money(reasoning, f"{model}.reasoning"),
        long_context=_long_context(raw.get("long_context"), f"{model}.long_context"),
    )


def parse_catalog(doc: Any) -> tuple[dt.date, dict[str, ModelEntry]]:
    """(effective date, models) of a catalogue document (``catalog.json``'s format)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise CatalogError('expected an object with "effective_from" and "models"')
    try:
        effective_from = dt.date.fromisoformat(str(doc.get("effective_from")))
    except ValueError:
        raise CatalogError('"effective_from" is not a date (YYYY-MM-DD)') from None
    models = {}
    for model, raw in doc["models"].items():
        if not isinstance(model, str) or not model.strip() or len(model) > 200:
            raise CatalogError(f"{model!r}: not a model name")
        models[model] = parse_entry(model, raw)
    return effective_from, models


def _load() -> tuple[dt.date, dict[str, ModelEntry]]:
    with CATALOG_PATH.open() as f:
        return parse_catalog(json.load(f))


CATALOG_EFFECTIVE_FROM, CATALOG = _load()

CatalogRow = tuple[Decimal, Decimal, Decimal, Decimal, Decimal]


def _row(entry: ModelEntry) -> CatalogRow:
    standard = entry.tiers[TIER_STANDARD]
    batch = entry.tiers.get(TIER_BATCH, standard)
    return standard.input, standard.cached_input, standard.output, batch.input, batch.output


# The standard and batch columns every price row has: input, cached input, output, batch input, batch output.
OPENAI_PRICES: dict[str, CatalogRow] = {model: _row(entry) for model, entry in CATALOG.items()}

# Anthropic's list prices (standard tier) for the models whose prices we could check when this was
# written: the same columns, the cached-input price being the prompt-cache read price. Batch is half
# price. Other Claude models get their prices on the provider's page.
ANTHROPIC_PRICES: dict[str, CatalogRow] = {
    "claude-opus-4-6": (Decimal("5.00"), Decimal("0.50"), Decimal("25.00"), Decimal("2.50"), Decimal("12.50")),
    "claude-sonnet-4-6": (Decimal("3.00"), Decimal("0.30"), Decimal("15.00"), Decimal("1.50"), Decimal("7.50")),
    "claude-sonnet-4-5": (Decimal("3.00"), Decimal("0.30"), Decimal("15.00"), Decimal("1.50"), Decimal("7.50")),
    "claude-opus-4-5": (Decimal("5.00"), Decimal("0.50"), Decimal("25.00"), Decimal("2.50"), Decimal("12.50")),
    "claude-haiku-4-5": (Decimal("1.00"), Decimal("0.10"), Decimal("5.00"), Decimal("0.50"), Decimal("2.50")),
}
# Prompt-cache writes (5-minute cache: 1.25x the input price), USD per 1M tokens.
ANTHROPIC_CACHE_WRITE_PRICES: dict[str, Decimal] = {
    "claude-opus-4-6": Decimal("6.25"),
    "claude-sonnet-4-6": Decimal("3.75"),
    "claude-sonnet-4-5": Decimal("3.75"),
    "claude-opus-4-5": Decimal("6.25"),
    "claude-haiku-4-5": Decimal("1.25"),
}

# Largest completion each model can return: the worst case a budget reserves
# when a request sets no output cap. Models not listed get GATEWAY_UNKNOWN_MODEL_MAX_OUTPUT_TOKENS.
MAX_OUTPUT_TOKENS: dict[str, int] = {
    **{model: entry.max_output for model, entry in CATALOG.items() if entry.max_output},
    "claude-opus-4-6": 128_000,
    "claude-sonnet-4-6": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-opus-4-5": 64_000,
    "claude-haiku-4-5": 64_000,
}
CONTEXT_WINDOW: dict[str, int] = {model: entry.context_window for model, entry in CATALOG.items()}
