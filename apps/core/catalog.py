"""Public list prices for common OpenAI models, USD per 1M tokens.

Figures as published on OpenAI's pricing page (standard tier) when this
catalogue was written; they seed new providers and stay editable per provider,
each edit a new row with its own effective date.
Columns: input, cached input, output, batch input, batch output.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

CATALOG_EFFECTIVE_FROM = dt.date(2025, 8, 7)


CatalogRow = tuple[Decimal, Decimal, Decimal, Decimal, Decimal]


def _row(input_: str, cached: str, output: str, batch_input: str, batch_output: str) -> CatalogRow:
    return Decimal(input_), Decimal(cached), Decimal(output), Decimal(batch_input), Decimal(batch_output)


OPENAI_PRICES: dict[str, CatalogRow] = {
    "gpt-5": _row("1.25", "0.125", "10.00", "0.625", "5.00"),
    "gpt-5-mini": _row("0.25", "0.025", "2.00", "0.125", "1.00"),
    "gpt-5-nano": _row("0.05", "0.005", "0.40", "0.025", "0.20"),
    "gpt-4.1": _row("2.00", "0.50", "8.00", "1.00", "4.00"),
    "gpt-4.1-mini": _row("0.40", "0.10", "1.60", "0.20", "0.80"),
    "gpt-4.1-nano": _row("0.10", "0.025", "0.40", "0.05", "0.20"),
    "gpt-4o": _row("2.50", "1.25", "10.00", "1.25", "5.00"),
    "gpt-4o-mini": _row("0.15", "0.075", "0.60", "0.075", "0.30"),
    "o3": _row("2.00", "0.50", "8.00", "1.00", "4.00"),
    "o4-mini": _row("1.10", "0.275", "4.40", "0.55", "2.20"),
    # No prompt caching or batch discount listed for this legacy completions model.
    "gpt-3.5-turbo-instruct": _row("1.50", "1.50", "2.00", "1.50", "2.00"),
    "text-embedding-3-small": _row("0.02", "0.02", "0", "0.01", "0"),
    "text-embedding-3-large": _row("0.13", "0.13", "0", "0.065", "0"),
    "text-embedding-ada-002": _row("0.10", "0.10", "0", "0.05", "0"),
}

# Anthropic's list prices (standard tier) for the models whose prices we could check when this was
# written: the same columns, the cached-input price being the prompt-cache read price. Batch is half
# price. Other Claude models get their prices on the provider's page.
ANTHROPIC_PRICES: dict[str, CatalogRow] = {
    "claude-opus-4-5": _row("5.00", "0.50", "25.00", "2.50", "12.50"),
    "claude-haiku-4-5": _row("1.00", "0.10", "5.00", "0.50", "2.50"),
}
# Prompt-cache writes (5-minute cache: 1.25x the input price), USD per 1M tokens.
ANTHROPIC_CACHE_WRITE_PRICES: dict[str, Decimal] = {
    "claude-opus-4-5": Decimal("6.25"),
    "claude-haiku-4-5": Decimal("1.25"),
}

# Largest completion each model can return: the worst case a budget reserves
# when a request sets no max_tokens. Models not listed get 4096.
MAX_OUTPUT_TOKENS: dict[str, int] = {
    "gpt-5": 128_000,
    "gpt-5-mini": 128_000,
    "gpt-5-nano": 128_000,
    "gpt-4.1": 32_768,
    "gpt-4.1-mini": 32_768,
    "gpt-4.1-nano": 32_768,
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "o3": 100_000,
    "o4-mini": 100_000,
    "gpt-3.5-turbo-instruct": 4_096,
    "claude-opus-4-5": 64_000,
    "claude-haiku-4-5": 64_000,
}
