"""One cost formula: the snapshot's per-token prices and the stored per-1M prices agree, never below zero."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from apps.core.pricing import MTOK, PriceRow, to_nano, token_cost
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


def test_money_in_redis_is_whole_nano_dollars() -> None:
    assert to_nano(Decimal("0.000000001")) == 1 and to_nano(Decimal(1)) == 10**9 and MTOK == 10**6
