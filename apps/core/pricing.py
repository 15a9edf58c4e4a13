"""Money: the units it is counted in and the one formula that prices tokens.

Prices are USD per million tokens (``MTOK``), as providers publish them and as
``Price`` rows store them. The gateway's snapshot divides them once into USD
per token (``PriceRow``). Budgets in Redis count integer nano-dollars
(``to_nano``), so Lua scripts add and compare whole numbers.

Token classes: input, cached input, output and reasoning (a part of the output
that a provider may price apart; OpenAI bills it as output). Service tiers:
``standard`` (OpenAI's ``default``), ``flex``, ``priority`` and ``batch``, each
with its own input, cached-input and output rates; a tier a price does not list
is billed at the standard rates.

Long context: some models bill a whole request at dearer rates once its prompt passes a size (OpenAI's
GPT-5.5 and GPT-5.4 above 272K input tokens: input x2, output x1.5, on every tier). ``LongContext`` holds
that rule; the one formula applies it, so the ledger, the batch runner and the budget's worst case agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

MTOK = Decimal(1_000_000)  # tokens per price unit: prices are USD per 1M tokens
NANO = Decimal(1_000_000_000)  # nano-dollars per USD: money in Redis

TIER_STANDARD, TIER_FLEX, TIER_PRIORITY, TIER_BATCH = "standard", "flex", "priority", "batch"
TIERS = (TIER_STANDARD, TIER_FLEX, TIER_PRIORITY, TIER_BATCH)
# What providers call their tiers (``service_tier`` in requests and answers), as our names.
_TIER_NAMES = {"default": TIER_STANDARD, "standard": TIER_STANDARD, "auto": TIER_STANDARD,
               "flex": TIER_FLEX, "priority": TIER_PRIORITY, "batch": TIER_BATCH}  # fmt: skip
TIER_MAX = 10  # the ledger's service_tier column


def tier_name(value: Any) -> str:
    """A provider's ``service_tier`` as one of ``TIERS`` (anything unknown, or none, is standard)."""
    return _TIER_NAMES.get(value, TIER_STANDARD) if isinstance(value, str) else TIER_STANDARD


def reserve_tiers(requested: Any) -> tuple[str, ...]:
    """The tiers a request asking for ``requested`` may be billed at: the standard one (a provider may
    serve a request there whatever it asked), the one asked for, and priority for ``auto`` (a project's
    default tier can be priority)."""
    if requested == "auto":
        return (TIER_STANDARD, TIER_PRIORITY)
    return (TIER_STANDARD, tier_name(requested))


ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class LongContext:
    """A model's long-context rate: a request whose prompt has more than ``above`` tokens (cached ones
    included) is billed whole at its input rates times ``input_factor`` and its output rates times
    ``output_factor``."""

    above: int
    input_factor: Decimal
    output_factor: Decimal

    def factors(self, prompt_tokens: int) -> tuple[Decimal, Decimal]:
        """(input, output) multipliers for a request with ``prompt_tokens`` in."""
        if prompt_tokens > self.above:
            return self.input_factor, self.output_factor
        return ONE, ONE


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
    reasoning_tokens: int = 0,
    reasoning_rate: Decimal | None = None,
    long_context: LongContext | None = None,
) -> Decimal:
    """What these tokens cost at these rates, in USD per whatever token count the rates are for.

    Cached prompt tokens (cache reads) are billed at the cached-input rate, prompt
    tokens written to the provider's prompt cache (Anthropic bills those writes) at
    the cache-write rate (the input rate when the price sets none), and the rest of
    the prompt at the input rate; a provider that reports more cached than prompt
    tokens never makes the uncached part negative. Reasoning tokens are part of
    the completion tokens (as providers count them): billed at ``reasoning_rate``
    when one is given, else as output like the rest. A ``long_context`` rule whose size the prompt
    passes multiplies every input-side rate by its input factor and every output-side rate by its
    output factor.
    """
    no_reasoning_rate = reasoning_rate is None or not reasoning_tokens
    if not cached_tokens and not cache_write_tokens and long_context is None and no_reasoning_rate:
        # Most answers: no cache read or write, no reasoning rate, no long-context rule. The same sum as
        # below without its terms of zero (each a Decimal multiply and add, on every request).
        return prompt_tokens * input_rate + completion_tokens * output_rate
    written = min(cache_write_tokens, max(prompt_tokens - cached_tokens, 0))
    uncached = max(prompt_tokens - cached_tokens - written, 0)
    write_rate = input_rate if cache_write_rate is None else cache_write_rate
    cost = uncached * input_rate + cached_tokens * cached_input_rate + written * write_rate
    if reasoning_rate is None or not reasoning_tokens:
        output = completion_tokens * output_rate
    else:
        reasoning = min(reasoning_tokens, completion_tokens)
        output = (completion_tokens - reasoning) * output_rate + reasoning * reasoning_rate
    if long_context is None:
        return cost + output
    input_factor, output_factor = long_context.factors(prompt_tokens)
    return cost * input_factor + output * output_factor


def to_nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


@dataclass(frozen=True, slots=True)
class TierRates:
    """One service tier's rates: input, cached input and output, in the row's unit."""

    input: Decimal
    cached_input: Decimal
    output: Decimal


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One model's price from a date on, as the gateway reads it: USD per token, divided once.

    ``input``/``cached_input``/``output`` are the standard tier's; ``tiers`` holds the other tiers
    the provider prices (flex, priority); ``reasoning`` is a reasoning-token rate where the provider
    prices reasoning apart from output (None: billed as output).
    """

    effective_from: dt.date
    input: Decimal
    cached_input: Decimal
    output: Decimal
    cache_write: Decimal | None = None  # None: cache writes cost the input price
    reasoning: Decimal | None = None
    tiers: Mapping[str, TierRates] = field(default_factory=dict)
    long_context: LongContext | None = None
    # The standard tier's rates as one value, made once: ``rates`` is asked for them on every request.
    standard: TierRates = field(init=False, repr=False, compare=False)
    # ``worst_cost``'s rates by the tiers asked about, worked out on first use: every admission asks.
    _dearest: dict[tuple[str, ...], tuple[tuple[Decimal, Decimal], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "standard", TierRates(self.input, self.cached_input, self.output))
        object.__setattr__(self, "_dearest", {})

    @classmethod
    def per_mtok(
        cls,
        *,
        effective_from: dt.date,
        input_per_mtok: Decimal,
        cached_input_per_mtok: Decimal,
        output_per_mtok: Decimal,
        cache_write_per_mtok: Decimal | None = None,
        reasoning_per_mtok: Decimal | None = None,
        tiers_per_mtok: Mapping[str, TierRates] | None = None,
        long_context: LongContext | None = None,
    ) -> PriceRow:
        tiers = {
            name: TierRates(rates.input / MTOK, rates.cached_input / MTOK, rates.output / MTOK)
            for name, rates in (tiers_per_mtok or {}).items()
        }
        write = None if cache_write_per_mtok is None else cache_write_per_mtok / MTOK
        reasoning = None if reasoning_per_mtok is None else reasoning_per_mtok / MTOK
        return cls(
            effective_from, input_per_mtok / MTOK, cached_input_per_mtok / MTOK, output_per_mtok / MTOK,
            write, reasoning, tiers, long_context,
        )  # fmt: skip

    def rates(self, tier: str = TIER_STANDARD) -> TierRates:
        """The rates of ``tier``: its own where the provider prices it, else the standard ones."""
        rates = self.tiers.get(tier) if tier != TIER_STANDARD else None
        return rates if rates is not None else self.standard

    def cost(
        self,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        tier: str = TIER_STANDARD,
    ) -> Decimal:
        rates = self.rates(tier)
        return token_cost(
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            input_rate=rates.input,
            cached_input_rate=rates.cached_input,
            output_rate=rates.output,
            cache_write_tokens=cache_write_tokens,
            cache_write_rate=self.cache_write,
            # A separate reasoning rate is the standard tier's; other tiers bill reasoning as their output.
            reasoning_tokens=reasoning_tokens if tier == TIER_STANDARD or tier not in self.tiers else 0,
            reasoning_rate=self.reasoning,
            long_context=self.long_context,
        )

    def worst_cost(self, *, prompt_tokens: int, output_tokens: int, tiers: tuple[str, ...]) -> Decimal:
        """The most ``prompt_tokens`` in and ``output_tokens`` out can cost on any of ``tiers``: every output
        token may be a reasoning token and every prompt token a cache write, so the dearer rates count
        (long-context ones once the prompt passes the rule's size)."""
        rates = self._dearest.get(tiers)
        if rates is None:
            rates = self._dearest[tiers] = self._dearest_rates(tiers)
        if self.long_context is not None:
            input_factor, output_factor = self.long_context.factors(prompt_tokens)
            return max(prompt_tokens * p * input_factor + output_tokens * o * output_factor for p, o in rates)
        if len(rates) == 1:  # most requests: the standard tier alone (asked for, or twice)
            prompt, output = rates[0]
            return prompt_tokens * prompt + output_tokens * output
        return max(prompt_tokens * p + output_tokens * o for p, o in rates)

    def _dearest_rates(self, tiers: tuple[str, ...]) -> tuple[tuple[Decimal, Decimal], ...]:
        """Per distinct tier of ``tiers``, its dearest prompt and output rates (a cache write or reasoning
        rate where dearer)."""
        pairs: list[tuple[Decimal, Decimal]] = []
        for tier in tiers:
            rates = self.rates(tier)
            prompt = max(rates.input, self.cache_write) if self.cache_write is not None else rates.input
            output = max(rates.output, self.reasoning) if self.reasoning is not None else rates.output
            if (prompt, output) not in pairs:
                pairs.append((prompt, output))
        return tuple(pairs)
