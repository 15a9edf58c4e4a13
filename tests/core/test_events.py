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
    event = ledger_event_clean({name: "x" * 1000 for name in ("feature", "end_user", "requested_model", "route")})
    for name in ("feature", "end_user", "requested_model", "route"):
        assert len(event[name]) == fields[name].max_length


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.none() | st.booleans() | st.integers() | st.floats() | st.text()))
def test_any_event_cleans_without_error(event: dict[str, Any]) -> None:
    cleaned = ledger_event_clean(dict(event))
    assert 0 <= cleaned["prompt_tokens"] <= INT_MAX and Decimal(cleaned["cost"]) >= 0
    assert "\x00" not in cleaned["feature"] + cleaned["end_user"] + cleaned["route"]
    shadow = shadow_event_clean(dict(event))
    assert "\x00" not in shadow["primary_text"] and Decimal(shadow["shadow_cost"]) >= 0
