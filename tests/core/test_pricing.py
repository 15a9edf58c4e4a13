"""One cost formula: the snapshot's per-token prices and the stored per-1M prices agree, never below zero."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from apps.core.pricing import MTOK, LongContext, PriceRow, to_nano, token_cost
from apps.providers.models import Price

RATES = st.decimals(min_value=0, max_value=100, places=6)
COUNTS = st.integers(min_value=0, max_value=10**7)


@given(RATES, RATES, RATES, COUNTS, COUNTS, COUNTS)
def test_the_gateway_and_the_control_plane_price_alike(
    inp: Decimal, cached: Decimal, out: Decimal, prompt: int, cached_tokens: int, completion: int
) -> None:
    row = PriceRow.per_mtok(
        effective_from=dt.date(2025, 1, 1), input_per_mtok=inp, cached_input_per_mtok=cached, output_per_mtok=out
    )
    price = Price(input_per_mtok=inp, cached_input_per_mtok=cached, output_per_mtok=out)
    counts = {"prompt_tokens": prompt, "cached_tokens": cached_tokens, "completion_tokens": completion}
    assert row.cost(**counts) == price.cost(**counts) >= 0


def test_cached_tokens_past_the_prompt_are_not_billed_twice() -> None:
    cost = token_cost(prompt_tokens=10, cached_tokens=50, completion_tokens=0, input_rate=Decimal(1),
                      cached_input_rate=Decimal("0.5"), output_rate=Decimal(4))  # fmt: skip
    assert cost == Decimal(25)  # 50 cached at 0.5; the uncached part is 0, not -40


@given(RATES, RATES, RATES, RATES, COUNTS, COUNTS, COUNTS, st.none() | RATES)
def test_an_answer_without_cache_or_reasoning_rate_takes_the_short_sum_to_the_same_amount(
    inp: Decimal, cached: Decimal, out: Decimal, write: Decimal, prompt: int, completion: int, reasoning: int,
    reasoning_rate: Decimal | None,
) -> None:  # fmt: skip
    rates = {"input_rate": inp, "cached_input_rate": cached, "output_rate": out, "cache_write_rate": write,
             "reasoning_rate": reasoning_rate}  # fmt: skip
    counts = {"prompt_tokens": prompt, "cached_tokens": 0, "completion_tokens": completion}
    short = token_cost(**counts, reasoning_tokens=reasoning, **rates)
    # A long-context rule the prompt never passes takes the whole formula, with factors of one.
    never = LongContext(10**9, Decimal(1), Decimal(1))
    whole = token_cost(**counts, reasoning_tokens=reasoning, long_context=never, **rates)
    assert short == whole
    if reasoning_rate is None or not reasoning:
        assert short == prompt * inp + completion * out
    else:  # a reasoning rate of its own, zero included, is not the short sum's
        reasoning = min(reasoning, completion)
        assert short == prompt * inp + (completion - reasoning) * out + reasoning * reasoning_rate


def test_money_in_redis_is_whole_nano_dollars() -> None:
    assert to_nano(Decimal("0.000000001")) == 1 and to_nano(Decimal(1)) == 10**9 and MTOK == 10**6


LONG = LongContext(272_000, Decimal(2), Decimal("1.5"))


@given(RATES, RATES, RATES, COUNTS, COUNTS, COUNTS)
def test_long_context_rates_price_alike_in_the_gateway_and_the_control_plane(
    inp: Decimal, cached: Decimal, out: Decimal, prompt: int, cached_tokens: int, completion: int
) -> None:
    row = PriceRow.per_mtok(effective_from=dt.date(2025, 1, 1), input_per_mtok=inp, cached_input_per_mtok=cached,
                            output_per_mtok=out, long_context=LONG)  # fmt: skip
    price = Price(input_per_mtok=inp, cached_input_per_mtok=cached, output_per_mtok=out,
                  long_context_above_tokens=LONG.above, long_context_input_factor=LONG.input_factor,
                  long_context_output_factor=LONG.output_factor)  # fmt: skip
    counts = {"prompt_tokens": prompt, "cached_tokens": cached_tokens, "completion_tokens": completion}
    assert row.cost(**counts) == price.cost(**counts) >= 0


def test_a_prompt_past_the_long_context_size_is_billed_whole_at_the_dearer_rates() -> None:
    # GPT-5.4's list prices: 2.50 in, 0.25 cached, 15.00 out per 1M; past 272K in, x2 and x1.5.
    row = PriceRow.per_mtok(effective_from=dt.date(2026, 3, 5), input_per_mtok=Decimal("2.50"),
                            cached_input_per_mtok=Decimal("0.25"), output_per_mtok=Decimal("15.00"),
                            long_context=LONG)  # fmt: skip
    at_size = row.cost(prompt_tokens=272_000, cached_tokens=0, completion_tokens=1_000)
    assert at_size == Decimal("0.68") + Decimal("0.015")
    past = row.cost(prompt_tokens=300_000, cached_tokens=100_000, completion_tokens=1_000)
    assert past == (Decimal("0.50") + Decimal("0.025")) * 2 + Decimal("0.015") * Decimal("1.5")
    # The budget's worst case counts the same rates once the prompt passes the size, on every tier.
    assert row.worst_cost(prompt_tokens=300_000, output_tokens=1_000, tiers=("standard", "flex")) == (
        Decimal("0.75") * 2 + Decimal("0.015") * Decimal("1.5")
    )
    assert row.worst_cost(prompt_tokens=1_000, output_tokens=1_000, tiers=("standard",)) == Decimal("0.0175")


def test_batch_prices_follow_the_long_context_rule_too() -> None:
    price = Price(batch_input_per_mtok=Decimal("1.25"), batch_output_per_mtok=Decimal("7.50"),
                  long_context_above_tokens=LONG.above, long_context_input_factor=LONG.input_factor,
                  long_context_output_factor=LONG.output_factor)  # fmt: skip
    assert price.batch_cost(prompt_tokens=400_000, completion_tokens=2_000) == (
        Decimal("0.5") * 2 + Decimal("0.015") * Decimal("1.5")
    )
    assert price.batch_cost(prompt_tokens=200_000, completion_tokens=2_000) == Decimal("0.25") + Decimal("0.015")
