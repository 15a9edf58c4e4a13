"""Which rules an earlier rule shadows or overlaps, read from the conditions alone (plain Python)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from apps.routing.overlap import OVERLAPS, SHADOWED, covers, meets, rule_overlaps


@dataclass
class Rule:
    id: int | None = None
    name: str = "r"
    is_active: bool = True
    match_models: list[str] = field(default_factory=list)
    match_features: list[str] = field(default_factory=list)
    match_end_users: list[str] = field(default_factory=list)
    match_api_key_id: int | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    match_tools: str = "any"
    match_regex: str = ""


def kinds(*rules: Rule) -> dict[int | None, list[tuple[int | None, str]]]:
    return {k: [(o.earlier_id, o.kind) for o in v] for k, v in rule_overlaps(list(rules)).items()}


def test_a_wider_earlier_rule_shadows_a_narrower_later_one() -> None:
    wide = Rule(id=1, match_models=["gpt-4o", "gpt-4.1"])
    narrow = Rule(id=2, match_models=["gpt-4o"], match_features=["search"], min_prompt_tokens=10)
    assert kinds(wide, narrow) == {2: [(1, SHADOWED)]}
    assert kinds(narrow, wide) == {1: [(2, OVERLAPS)]}  # the narrow one first only takes a part


def test_conditions_that_exclude_each_other_neither_shadow_nor_overlap() -> None:
    assert kinds(Rule(id=1, match_models=["a"]), Rule(id=2, match_models=["b"])) == {}
    assert kinds(Rule(id=1, max_prompt_tokens=100), Rule(id=2, min_prompt_tokens=101)) == {}
    assert kinds(Rule(id=1, match_tools="with"), Rule(id=2, match_tools="without")) == {}
    assert kinds(Rule(id=1, match_api_key_id=3), Rule(id=2, match_api_key_id=4)) == {}


def test_regexes_are_compared_as_text_and_inactive_rules_count_for_nothing() -> None:
    assert kinds(Rule(id=1, match_regex="refund"), Rule(id=2, match_regex="refund")) == {2: [(1, SHADOWED)]}
    assert kinds(Rule(id=1, match_regex="refund"), Rule(id=2, match_regex="refunds?")) == {2: [(1, OVERLAPS)]}
    assert kinds(Rule(id=1, match_regex="refund"), Rule(id=2)) == {2: [(1, OVERLAPS)]}
    assert kinds(Rule(id=1), Rule(id=2, match_regex="x")) == {2: [(1, SHADOWED)]}
    assert kinds(Rule(id=1, is_active=False), Rule(id=2)) == {}
    assert kinds(Rule(id=1), Rule(id=2, is_active=False)) == {}


_names = st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)
_bounds = st.one_of(st.none(), st.integers(min_value=0, max_value=50))
_rules = st.builds(
    Rule,
    match_models=_names,
    match_features=_names,
    match_api_key_id=st.one_of(st.none(), st.sampled_from([1, 2])),
    min_prompt_tokens=_bounds,
    max_prompt_tokens=_bounds,
    match_tools=st.sampled_from(["any", "with", "without"]),
)


@given(_rules, _rules)
def test_covering_means_meeting_unless_nothing_can_match(a: Rule, b: Rule) -> None:
    """A rule that covers another also meets it, whenever the covered rule can match anything at all."""
    low, high = b.min_prompt_tokens or 0, b.max_prompt_tokens
    if covers(a, b) and (high is None or low <= high):
        assert meets(a, b)
    assert covers(a, a) and covers(Rule(), a)
