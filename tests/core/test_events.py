"""Events clean at the source: every value fits its column."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.core.events import (
    INT_MAX,
    clean_count,
    clean_money,
    clean_text,
    ledger_event_clean,
    shadow_event_clean,
)
from apps.ledger.models import LedgerEntry


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), (-3, 0), (10**20, INT_MAX), (1e300, INT_MAX), (float("nan"), 0), ("12", 12), ("x", 0), (True, 0),
     (None, 0), ([1], 0), (2.9, 2)],
)  # fmt: skip
def test_counts_are_non_negative_and_bounded(value: Any, expected: int) -> None:
    assert clean_count(value) == expected


def test_text_loses_control_characters_and_fits() -> None:
    assert clean_text("a\x00b\x1b\x7f\x85c", 100) == "abc"
    assert clean_text("é 預算\u00a0", 100) == "é 預算\u00a0"  # printable non-ASCII stays
    assert clean_text("x" * 300, 200) == "x" * 200
    assert clean_text(None, 5) == ""


def test_money_is_never_negative_and_fits_numeric_18_8() -> None:
    assert clean_money("-1") == "0"
    assert clean_money(Decimal("1e20")) == "9999999999.99999999"
    assert clean_money("NaN") == "0" and clean_money("abc") == "0"
    assert clean_money(Decimal("0.000000123456")) == "0.00000012"


def test_the_models_use_the_same_limits() -> None:
    """The column limits live in apps.core.events; the model reads them from there."""
    fields = {f.name: f for f in LedgerEntry._meta.get_fields() if hasattr(f, "max_length")}
    names = ("feature", "end_user", "requested_model", "route", "cache_key", "prefix_key", "embedding_key")
    event = ledger_event_clean({name: "x" * 1000 for name in names})
    for name in names:
        assert len(event[name]) == fields[name].max_length


def test_replay_fields_of_a_hostile_event_fit_their_columns() -> None:
    event = ledger_event_clean(
        {"cache_key": "k\x00" * 50, "prefix_tokens": -5, "turns": 1e30, "max_tokens": "16", "embedding_key": None}
    )
    assert event["cache_key"] == "k" * 50 and event["embedding_key"] == "" and event["prefix_key"] == ""
    assert (event["prefix_tokens"], event["turns"], event["max_tokens"]) == (0, INT_MAX, 16)
    assert ledger_event_clean({})["max_tokens"] is None


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.none() | st.booleans() | st.integers() | st.floats() | st.text()))
def test_any_event_cleans_without_error(event: dict[str, Any]) -> None:
    cleaned = ledger_event_clean(dict(event))
    assert 0 <= cleaned["prompt_tokens"] <= INT_MAX and Decimal(cleaned["cost"]) >= 0
    assert "\x00" not in cleaned["feature"] + cleaned["end_user"] + cleaned["route"]
    shadow = shadow_event_clean(dict(event))
    assert "\x00" not in shadow["primary_text"] and Decimal(shadow["shadow_cost"]) >= 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (1.0, 1.0), (0.0, 0.0), (1.5, None), (-0.1, None), (float("nan"), None), (float("inf"), None),
     ("0.9", None), (True, None), (None, None), ([0.9], None)],
)  # fmt: skip
def test_a_cascade_trials_confidence_is_a_probability_or_none(value: Any, expected: float | None) -> None:
    assert shadow_event_clean({"confidence": value})["confidence"] == expected


def test_a_route_decision_keeps_only_known_fields_fitted_for_jsonb() -> None:
    dirty = {
        "kind": "alias",
        "alias": "evil\x00\x1b[31m" + "a" * 500,
        "rule_id": -4,
        "retries": "lots",
        "would_block": [3, "x", -1, 2**70, 9],
        "tried": [{"model": "m\x00", "provider": None, "outcome": 503}, "not a target"],
        "limits_unchecked": "yes",
        "password": "leaked",
    }
    clean = ledger_event_clean({"decision": dirty})["decision"]
    assert set(clean) == {"kind", "alias", "rule_id", "retries", "would_block", "tried", "limits_unchecked"}
    assert "\x00" not in clean["alias"] and "\x1b" not in clean["alias"] and len(clean["alias"]) == 200
    assert (clean["rule_id"], clean["retries"], clean["limits_unchecked"]) == (None, 0, False)
    assert clean["would_block"] == [3, 9]
    assert clean["tried"] == [{"model": "m", "provider": "", "outcome": "503"}]


@pytest.mark.parametrize("garbage", [None, "direct", ["kind"], 7])
def test_a_decision_that_is_not_an_object_is_none(garbage: Any) -> None:
    assert ledger_event_clean({"decision": garbage})["decision"] is None


def _money_by_decimal(value: Any, digits: int, places: int) -> str:
    """``clean_money`` through Decimal only, as it was before its shortcut for amounts already clean."""
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return "0"
    if not amount.is_finite() or amount <= 0:
        return "0"
    step = Decimal(10) ** -places
    return format(min(amount, Decimal(10) ** (digits - places) - step).quantize(step), "f")


_AMOUNT_TEXT = st.one_of(
    st.from_regex(r"-?[0-9]{0,12}(\.[0-9]{0,12})?([eE]-?[0-9])?", fullmatch=True),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.decimals(min_value=0, max_value=10**11, places=8).map(lambda d: format(d, "f")),
    st.decimals(min_value=0, max_value=10**9, places=10).map(lambda d: format(d, "f")),
    st.sampled_from(["0.00000000", "0.0000000000", "9999999999.99999999", "10000000000.00000000", "00.10000000",
                     "0.1234567890", "+0.10000000", " 0.10000000", "٣.00000000", "1_0.00000000"]),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(_AMOUNT_TEXT, st.sampled_from([(18, 8), (18, 10)]))
def test_an_amount_given_as_text_cleans_as_the_decimal_would(value: str, column: tuple[int, int]) -> None:
    """The shortcut for text that is already a clean amount gives what the Decimal round trip gives."""
    digits, places = column
    assert clean_money(value, digits=digits, places=places) == _money_by_decimal(value, digits, places)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["feature", "end_user", "route", "request_id", "cost", "prompt_tokens",
                                        "turns", "latency_ms", "counterfactual_cost", "cache_key"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text() | _AMOUNT_TEXT))  # fmt: skip
def test_cleaning_a_clean_event_again_changes_nothing(event: dict[str, Any]) -> None:
    """What the consumer does to what the gateway cleaned: the values that fit are kept as they are."""
    once = ledger_event_clean(dict(event))
    twice = ledger_event_clean(dict(once))
    # An amount below the column's step cleans to "0.00000000" once and to "0" again: the same zero.
    money = ("cost", "counterfactual_cost")
    assert [Decimal(twice[name]) for name in money] == [Decimal(once[name]) for name in money]
    assert {k: v for k, v in twice.items() if k not in money} == {k: v for k, v in once.items() if k not in money}
