"""Money: the units it is counted in and the one formula that prices tokens.

Prices are USD per million tokens (``MTOK``), as providers publish them and as
``Price`` rows store them. The gateway's snapshot divides them once into USD
per token (``PriceRow``). Budgets in Redis count integer nano-dollars
(``to_nano``), so Lua scripts add and compare whole numbers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

MTOK = Decimal(1_000_000)  # tokens per price unit: prices are USD per 1M tokens
NANO = Decimal(1_000_000_000)  # nano-dollars per USD: money in Redis


def token_cost(
    *,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    input_rate: Decimal,
    cached_input_rate: Decimal,
    output_rate: Decimal,
    cache_write_tokens: int = 0,
    cache_write_rate: Decimal | None = None,
) -> Decimal:
    """What these tokens cost at these rates, in USD per whatever token count the rates are for.

    Cached prompt tokens (cache reads) are billed at the cached-input rate, prompt
    tokens written to the provider's prompt cache (Anthropic bills those writes) at
    the cache-write rate (the input rate when the price sets none), and the rest of
    the prompt at the input rate; a provider that reports more cached than prompt
    tokens never makes the uncached part negative.
    """
    written = min(cache_write_tokens, max(prompt_tokens - cached_tokens, 0))
    uncached = max(prompt_tokens - cached_tokens - written, 0)
    write_rate = input_rate if cache_write_rate is None else cache_write_rate
    return (
        uncached * input_rate
        + cached_tokens * cached_input_rate
        + written * write_rate
        + completion_tokens * output_rate
    )


def to_nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One model's price from a date on, as the gateway reads it: USD per token, divided once."""

    effective_from: dt.date
    input: Decimal
    cached_input: Decimal
    output: Decimal
    cache_write: Decimal | None = None  # None: cache writes cost the input price

    @classmethod
    def per_mtok(
        cls,
        *,
        effective_from: dt.date,
        input_per_mtok: Decimal,
        cached_input_per_mtok: Decimal,
        output_per_mtok: Decimal,
        cache_write_per_mtok: Decimal | None = None,
    ) -> PriceRow:
        write = None if cache_write_per_mtok is None else cache_write_per_mtok / MTOK
        return cls(effective_from, input_per_mtok / MTOK, cached_input_per_mtok / MTOK, output_per_mtok / MTOK, write)

    def cost(
        self, *, prompt_tokens: int, cached_tokens: int, completion_tokens: int, cache_write_tokens: int = 0
    ) -> Decimal:
        return token_cost(
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            input_rate=self.input,
            cached_input_rate=self.cached_input,
            output_rate=self.output,
            cache_write_tokens=cache_write_tokens,
            cache_write_rate=self.cache_write,
        )
