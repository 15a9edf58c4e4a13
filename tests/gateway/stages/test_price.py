"""Usage pricing: the provider's counts when they can be believed, else our estimate, marked as such."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from apps.core.pricing import PriceRow
from apps.core.snapshot import KeyPolicy, ProviderTarget
from apps.gateway.call import Call
from apps.gateway.stages.plan import Target
from apps.gateway.stages.price import believable, cacheable, price_answer

KEY = KeyPolicy(
    id=1, lookup_id="abcdefgh", key_hash=b"", project_id=1, organization_id=1, allowed_models=frozenset(),
    default_feature="", expires_at=None, revoked=False,
)  # fmt: skip
PROVIDER = ProviderTarget(id=1, name="p", kind="simulated", base_url="", secret="")
MINI = PriceRow.per_mtok(
    effective_from=dt.date(2025, 1, 1), input_per_mtok=Decimal("0.15"), cached_input_per_mtok=Decimal("0.075"),
    output_per_mtok=Decimal("0.60"),
)  # fmt: skip
ASKED = PriceRow.per_mtok(
    effective_from=dt.date(2025, 1, 1), input_per_mtok=Decimal("2.50"), cached_input_per_mtok=Decimal("1.25"),
    output_per_mtok=Decimal("10"),
)  # fmt: skip


def _call(prompt_estimate: int = 50) -> Call:
    return Call(request_id="r", endpoint="chat.completions", started=0.0, created_at=0.0, key=KEY,
                prompt_tokens=prompt_estimate)  # fmt: skip


def _answer(usage: Any, text: str = "x" * 40) -> dict[str, Any]:
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "usage": usage}


def test_believed_usage_is_priced_cached_tokens_at_the_cached_rate() -> None:
    call = _call()
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 400}}
    price_answer(call, Target(PROVIDER, "gpt-4o-mini", MINI, ASKED), _answer(usage))
    assert (call.prompt_tokens, call.cached_tokens, call.completion_tokens) == (1000, 400, 100)
    assert call.cost == Decimal("0.000180")  # 600 x 0.15 + 400 x 0.075 + 100 x 0.60, per 1M
    assert call.counterfactual_cost == Decimal("0.003000")  # the same tokens on the model asked for
    assert not call.usage_estimated and not call.decision.unpriced


@pytest.mark.parametrize(
    "usage",
    [None, "lots", [1, 2], {"prompt_tokens": -9, "completion_tokens": 1},
     {"prompt_tokens": "12", "completion_tokens": 3}, {"prompt_tokens": 1.5, "completion_tokens": 3},
     {"prompt_tokens": True, "completion_tokens": 3}],
)  # fmt: skip
def test_usage_that_cannot_be_believed_keeps_our_estimate_and_is_marked(usage: Any) -> None:
    assert not believable(usage)
    call = _call(prompt_estimate=50)
    price_answer(call, Target(PROVIDER, "gpt-4o-mini", MINI, None), _answer(usage, "y" * 40))
    assert call.usage_estimated and (call.prompt_tokens, call.completion_tokens) == (50, 10)
    assert call.cost > 0, "an estimated row is billed, never $0"


def test_more_cached_than_prompt_tokens_never_makes_the_cost_negative() -> None:
    call = _call()
    usage = {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 10**6}}
    price_answer(call, Target(PROVIDER, "gpt-4o-mini", MINI, None), _answer(usage))
    assert call.cached_tokens == 10 and call.cost == Decimal("0.00000075")


def test_a_model_without_a_price_costs_nothing_and_says_so() -> None:
    call = _call()
    price_answer(call, Target(PROVIDER, "mystery", None, None), _answer({"prompt_tokens": 5, "completion_tokens": 5}))
    assert call.cost == 0 and call.decision.unpriced and call.decision.text().endswith(";unpriced")


def test_only_whole_unfiltered_answers_are_cacheable() -> None:
    assert cacheable(_answer(None))
    assert not cacheable({"choices": []})
    assert not cacheable({"choices": [{"message": {"content": "x"}, "finish_reason": "content_filter"}]})
    assert not cacheable({"choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}]})
    assert not cacheable({"choices": ["x"]})
