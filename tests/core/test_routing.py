"""Rule matching, split draws and cascade confidence: the data plane's pure functions."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from apps.core.patterns import Pattern
from apps.core.routing import (
    RequestFacts,
    RuleView,
    TargetView,
    confidence,
    first_match,
    last_user_text,
    normalize_text,
    split_order,
)

MINI = TargetView(1, "gpt-4o-mini")


def facts(**overrides: Any) -> RequestFacts:
    values: dict[str, Any] = {
        "model": "gpt-4o",
        "feature": "",
        "end_user": "",
        "api_key_id": 1,
        "prompt_tokens": 10,
        "payload": {"messages": [{"role": "user", "content": "hello"}]},
    }
    values.update(overrides)
    return RequestFacts(**values)


def rule(rule_id: int = 1, **conditions: Any) -> RuleView:
    return RuleView(id=rule_id, name=f"r{rule_id}", action="route", primaries=(MINI,), **conditions)


@pytest.mark.parametrize(
    ("conditions", "matching", "other"),
    [
        ({"models": frozenset({"gpt-4o"})}, {}, {"model": "gpt-4.1"}),
        ({"features": frozenset({"search"})}, {"feature": "search"}, {"feature": "chat"}),
        ({"end_users": frozenset({"u1"})}, {"end_user": "u1"}, {"end_user": "u2"}),
        ({"api_key_id": 7}, {"api_key_id": 7}, {"api_key_id": 8}),
        ({"min_prompt_tokens": 100}, {"prompt_tokens": 100}, {"prompt_tokens": 99}),
        ({"max_prompt_tokens": 100}, {"prompt_tokens": 100}, {"prompt_tokens": 101}),
        ({"tools": "with"}, {"payload": {"messages": [], "tools": [{"type": "function"}]}}, {}),
        ({"tools": "without"}, {}, {"payload": {"messages": [], "tools": [{"type": "function"}]}}),
        ({"regex": Pattern(r"(?i)refund")}, {}, {}),
    ],
)
def test_each_condition_matches_and_rejects(
    conditions: dict[str, Any], matching: dict[str, Any], other: dict[str, Any]
) -> None:
    view = rule(**conditions)
    if "regex" in conditions:
        matching = {"payload": {"messages": [{"role": "user", "content": "I want a REFUND"}]}}
        other = {"payload": {"messages": [{"role": "user", "content": "thanks"}]}}
    assert view.matches(facts(**matching))
    assert not view.matches(facts(**other))


def test_all_conditions_must_hold_and_the_first_matching_rule_wins() -> None:
    both = rule(1, features=frozenset({"search"}), models=frozenset({"gpt-4o"}))
    any_search = rule(2, features=frozenset({"search"}))
    catch_all = rule(3)
    rules = [both, any_search, catch_all]
    assert first_match(rules, facts(feature="search")) is both
    assert first_match(rules, facts(feature="search", model="gpt-4.1")) is any_search
    assert first_match(rules, facts(feature="chat")) is catch_all
    assert first_match([both, any_search], facts()) is None


def test_regex_looks_at_the_last_user_message_only() -> None:
    payload = {
        "messages": [
            {"role": "user", "content": "refund please"},
            {"role": "assistant", "content": "refund?"},
            {"role": "user", "content": [{"type": "text", "text": "never mind"}]},
        ]
    }
    assert last_user_text(payload) == "never mind"
    assert not rule(regex=Pattern("refund")).matches(facts(payload=payload))
    assert last_user_text({"prompt": "legacy prompt"}) == "legacy prompt"


def test_split_draws_follow_the_weights_and_keep_the_rest_as_fallbacks() -> None:
    targets = (TargetView(1, "a", 70), TargetView(1, "b", 20), TargetView(1, "c", 10))
    rng = random.Random(7)
    firsts: Counter[str] = Counter()
    for _ in range(20_000):
        order = split_order(targets, rng)
        assert sorted(t.model for t in order) == ["a", "b", "c"]
        firsts[order[0].model] += 1
    assert firsts["a"] / 20_000 == pytest.approx(0.7, abs=0.015)
    assert firsts["c"] / 20_000 == pytest.approx(0.1, abs=0.015)
    assert [t.model for t in split_order(targets, random.Random(0)) if t.model != "a"][:1] in (["b"], ["c"])


def _completion(*probabilities: float, choices: int = 1) -> dict[str, Any]:
    content = [{"token": f"t{i}", "logprob": math.log(p)} for i, p in enumerate(probabilities)]
    return {"choices": [{"logprobs": {"content": content}} for _ in range(choices)]}


def test_confidence_aggregates_over_the_first_tokens() -> None:
    data = _completion(0.9, 0.5, 0.8, 0.1)
    assert confidence(data, tokens=1, aggregate="min") == pytest.approx(0.9)
    assert confidence(data, tokens=3, aggregate="min") == pytest.approx(0.5)
    assert confidence(data, tokens=3, aggregate="mean") == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert confidence(data, tokens=2, aggregate="joint") == pytest.approx(0.45)
    assert confidence({"choices": [{"logprobs": None}]}, tokens=1, aggregate="min") is None


def test_normalized_text_ignores_case_punctuation_and_spacing() -> None:
    assert normalize_text("  Billing. ") == normalize_text("billing") == "billing"
    assert normalize_text("Hello,   World!") == "hello world"
    assert normalize_text("refund") != normalize_text("no refund")
