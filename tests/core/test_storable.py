"""JSON that Postgres can store (apps/core/storable.py): strict parsing, NUL found at any depth, NUL replaced."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.core.storable import NotStorable, holds_nul, loads_storable, loads_strict, without_nul

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from(["a", "\x00", "\\", "u", "0", "é"]), max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet=st.sampled_from(["k", "\x00", "\\"]), max_size=3), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


def _replaced(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_replaced(v) for v in value]
    if isinstance(value, dict):
        return {_replaced(k): _replaced(v) for k, v in value.items()}
    return value


@given(json_values)
def test_without_nul_replaces_every_nul_and_nothing_else(value: Any) -> None:
    kept = without_nul(value)
    assert kept == _replaced(value)
    assert not holds_nul(kept)


@given(json_values)
def test_loads_storable_refuses_exactly_the_values_that_hold_nul(value: Any) -> None:
    raw = orjson.dumps(value)
    if holds_nul(value):
        with pytest.raises(NotStorable, match="u0000"):
            loads_storable(raw)
    else:
        assert loads_storable(raw) == value
        assert loads_storable(raw.decode()) == value


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b"[Infinity]", b"-Infinity", b'"\\ud800"', b"{'a': 1}", b"", b"\xff"])
def test_what_is_not_strict_json_is_refused(raw: bytes) -> None:
    with pytest.raises(NotStorable, match="not valid JSON"):
        loads_strict(raw)


def test_nul_is_found_deeper_than_pythons_recursion_limit() -> None:
    deep: Any = "\x00"
    for _ in range(5_000):
        deep = [deep]
    assert holds_nul(deep) and not holds_nul([[[["a"]]]])
