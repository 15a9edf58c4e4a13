"""One money formatter: apps/core/money.py for pages and messages, and its browser twin static/js/money.js for
chart ticks and tooltips. The same amounts must read the same on both sides."""

from __future__ import annotations

import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.core.money import plain_amount, usd

MONEY_JS = Path(settings.BASE_DIR) / "static" / "js" / "money.js"


@pytest.mark.parametrize(
    ("value", "places", "shown"),
    [
        (Decimal("-0.00621"), 4, "-$0.0062"),  # the sign before the dollar
        (Decimal("1234.5"), 2, "$1,234.50"),
        (None, 2, "$0.00"),
        (Decimal("0.005"), 2, "$0.01"),  # half up, as the browser rounds, not half even
        (Decimal("-0.000001"), 2, "$0.00"),  # a negative that rounds to zero has no sign
        (Decimal("0.000123"), 6, "$0.000123"),
        ("not money", 2, "$0.00"),
        (Decimal("NaN"), 2, "$0.00"),
        (Decimal("1e30"), 0, "$1,000,000,000,000,000,000,000,000,000,000"),
    ],
)
def test_usd_reads_one_way(value: object, places: int, shown: str) -> None:
    assert usd(value, places) == shown  # type: ignore[arg-type]


def test_plain_amount_never_writes_exponents() -> None:
    assert plain_amount(Decimal("0E-8")) == "0.00000000" and plain_amount(Decimal("-1.5E-7")) == "-0.00000015"


def _node_usd(cases: list[tuple[str, int]]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("No node on PATH: the dashboard's build needs Node.js (see README, Set-up).")
    script = (
        MONEY_JS.read_text()
        + f"\nconst cases = {json.dumps(cases)};"
        + "\nprocess.stdout.write(JSON.stringify(cases.map(([v, p]) => globalThis.costcontrolMoney.usd(v, p))));"
    )
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True)  # noqa: S603
    return json.loads(result.stdout)


# Amounts as the chart receives them: floats rounded to the micro-dollar (apps/dashboard/views.py, _money),
# kept away from exact halves of the last shown place, where a binary float cannot say which way to round.
_amounts = st.integers(min_value=-(10**12), max_value=10**12).map(lambda micros: Decimal(micros).scaleb(-6))


@hypothesis_settings(max_examples=1, deadline=None)
@given(st.lists(st.tuples(_amounts, st.sampled_from([0, 2, 4, 6])), min_size=200, max_size=200))
def test_the_browser_formats_money_as_the_pages_do(cases: list[tuple[Decimal, int]]) -> None:
    fixed = [(Decimal("-0.00621"), 4), (Decimal("1234.5"), 2), (Decimal("0"), 2), (Decimal("-0.000001"), 2)]
    wanted = [
        (amount, places)
        for amount, places in fixed + cases
        if places >= 6 or (abs(amount).scaleb(places) % 1) != Decimal("0.5")
    ]
    assert _node_usd([(float(a), p) for a, p in wanted]) == [usd(a, p) for a, p in wanted]


def test_api_amounts_are_plain_numbers_even_for_a_zero_difference() -> None:
    zero = Decimal("0.30000000") - Decimal("0.30000000")
    assert str(zero) == "0E-8" and plain_amount(zero) == "0.00000000" and plain_amount(0) == "0"
