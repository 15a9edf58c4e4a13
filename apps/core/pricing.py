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
) -> Decimal:
    """What these tokens cost at these rates, in USD per whatever token count the rates are for.

    Cached prompt tokens are billed at the cached-input rate and the rest of the
    prompt at the input rate; a provider that reports more cached than prompt
    tokens never makes the uncached part negative.
    """
    uncached = max(prompt_tokens - cached_tokens, 0)
    return uncached * input_rate + cached_tokens * cached_input_rate + completion_tokens * output_rate


def to_nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One model's price from a date on, as the gateway reads it: USD per token, divided once."""

    effective_from: dt.date
    input: Decimal
    cached_input: Decimal
    output: Decimal

    @classmethod
    def per_mtok(
        cls,
        *,
        effective_from: dt.date,
        input_per_mtok: Decimal,
        cached_input_per_mtok: Decimal,
        output_per_mtok: Decimal,
    ) -> PriceRow:
        return cls(effective_from, input_per_mtok / MTOK, cached_input_per_mtok / MTOK, output_per_mtok / MTOK)

    def cost(self, *, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Decimal:
        return token_cost(
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            input_rate=self.input,
            cached_input_rate=self.cached_input,
            output_rate=self.output,
        )
