"""The Responses API contract: validation, prompt estimates, usage, and prices per tier and token class."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.core.errors import GatewayError
from apps.core.pricing import PriceRow, TierRates, reserve_tiers, tier_name
from apps.core.request import ENDPOINT_RESPONSES, model_worst_case, prompt_estimate, validate
from apps.core.responses import is_response_id, output_text, usage_counts

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(body=st.dictionaries(st.sampled_from(["input", "instructions", "tools", "store", "background",
                                             "max_output_tokens", "previous_response_id", "service_tier",
                                             "reasoning", "text"]), JSON))  # fmt: skip
def test_any_body_is_accepted_or_a_400_never_a_crash(body: dict[str, Any]) -> None:
    payload = {"model": "gpt-4o", **body}
    try:
        validate(ENDPOINT_RESPONSES, payload)
    except GatewayError as exc:
        assert exc.status == 400 and exc.message
        return
    assert prompt_estimate(ENDPOINT_RESPONSES, payload) >= 0


@given(usage=JSON)
def test_usage_is_believed_only_when_it_is_counts(usage: Any) -> None:
    counts = usage_counts(usage)
    if counts is not None:
        assert 0 <= counts.cached_tokens <= counts.prompt_tokens
        assert 0 <= counts.reasoning_tokens <= counts.completion_tokens


def test_usage_counts_read_details() -> None:
    usage = {"input_tokens": 10, "output_tokens": 50, "input_tokens_details": {"cached_tokens": 4},
             "output_tokens_details": {"reasoning_tokens": 70}}  # fmt: skip
    counts = usage_counts(usage)
    assert counts is not None
    assert (counts.prompt_tokens, counts.cached_tokens, counts.completion_tokens, counts.reasoning_tokens) == (
        10, 4, 50, 50,
    )  # fmt: skip
    assert usage_counts({"input_tokens": -1, "output_tokens": 1}) is None
    assert usage_counts({"prompt_tokens": 1, "completion_tokens": 1}) is None


def test_prompt_estimate_counts_instructions_items_and_tools() -> None:
    small = prompt_estimate(ENDPOINT_RESPONSES, {"model": "m", "input": "hi"})
    image = {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}
    assert prompt_estimate(ENDPOINT_RESPONSES, {"model": "m", "input": [image]}) >= 4096
    tools = [{"type": "function", "name": "f", "parameters": {"properties": {"a" * 400: {}}}}]
    assert prompt_estimate(ENDPOINT_RESPONSES, {"model": "m", "input": "hi", "tools": tools}) > small + 100


def test_worst_case_output_is_max_output_tokens_or_the_models_limit_reasoning_included() -> None:
    payload = {"model": "o3", "input": "think"}
    assert model_worst_case(ENDPOINT_RESPONSES, payload, "o3", unknown_model_max_output=4096).output_tokens == 100_000
    payload["max_output_tokens"] = 500
    assert model_worst_case(ENDPOINT_RESPONSES, payload, "o3", unknown_model_max_output=4096).output_tokens == 500


def test_response_ids_and_output_text() -> None:
    assert is_response_id("resp_0123abc") and not is_response_id("../x") and not is_response_id("x" * 201)
    assert not is_response_id("") and not is_response_id(None) and not is_response_id("résp")
    response = {"output": [{"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": "a"},
                                                                                  {"type": "refusal"}]}]}  # fmt: skip
    assert output_text(response) == "a" and output_text({"output": "garbage"}) == ""


ROW = PriceRow.per_mtok(
    effective_from=dt.date(2025, 1, 1),
    input_per_mtok=Decimal("2"),
    cached_input_per_mtok=Decimal("0.5"),
    output_per_mtok=Decimal("8"),
    tiers_per_mtok={
        "flex": TierRates(Decimal("1"), Decimal("0.25"), Decimal("4")),
        "priority": TierRates(Decimal("3.5"), Decimal("0.875"), Decimal("14")),
    },  # fmt: skip
)


@pytest.mark.parametrize(("tier", "expected"), [("standard", "0.010"), ("flex", "0.005"), ("priority", "0.0175"),
                                                 ("batch", "0.010")])  # fmt: skip
def test_each_tier_has_its_own_rates_and_unpriced_tiers_cost_standard(tier: str, expected: str) -> None:
    cost = ROW.cost(prompt_tokens=1000, cached_tokens=0, completion_tokens=1000, tier=tier)
    assert cost == Decimal(expected)


def test_reasoning_priced_apart_only_where_a_price_says_so() -> None:
    apart = PriceRow.per_mtok(effective_from=dt.date(2025, 1, 1), input_per_mtok=Decimal("1"),
                              cached_input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"),
                              reasoning_per_mtok=Decimal("6"))  # fmt: skip
    assert apart.cost(prompt_tokens=0, cached_tokens=0, completion_tokens=100, reasoning_tokens=40) == Decimal(
        "0.00036"
    )
    assert ROW.cost(prompt_tokens=0, cached_tokens=0, completion_tokens=100, reasoning_tokens=40) == Decimal("0.0008")
    # The worst case assumes every output token may be a reasoning token at the dearer rate.
    assert apart.worst_cost(prompt_tokens=0, output_tokens=100, tiers=("standard",)) == Decimal("0.0006")


def test_tier_names_and_what_a_request_reserves() -> None:
    assert [tier_name(t) for t in ("default", "auto", "flex", "priority", "scale", None, 5)] == [
        "standard", "standard", "flex", "priority", "standard", "standard", "standard",
    ]  # fmt: skip
    assert reserve_tiers("flex") == ("standard", "flex") and reserve_tiers("auto") == ("standard", "priority")
    worst = ROW.worst_cost(prompt_tokens=1000, output_tokens=1000, tiers=reserve_tiers("priority"))
    assert worst == ROW.cost(prompt_tokens=1000, cached_tokens=0, completion_tokens=1000, tier="priority")
