"""How an amount of money reads, wherever people read one: pages, alert messages, import summaries,
break-even notes. Its browser twin is static/js/money.js (chart ticks and tooltips); tests check the two
agree. Exports and the API write amounts as plain numbers instead (``plain_amount``), for machines.

One rule: a fixed number of decimals chosen by the caller (ledger costs are tiny, so 6 by default),
rounded half up, thousands separated, and the sign before the dollar ("-$0.0062", not "$-0.0062"). An
amount that rounds to zero has no sign, so a tiny negative saving does not read "-$0.00".
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation

DEFAULT_PLACES = 6


def usd(value: Decimal | float | int | str | None, places: int = DEFAULT_PLACES) -> str:
    """``value`` in dollars with ``places`` decimals; nothing (None) or garbage reads as "$0.00…"."""
    places = max(0, min(int(places), 12))
    try:
        amount = Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        amount = Decimal(0)
    if not amount.is_finite():
        amount = Decimal(0)
    # Enough digits for any amount (the default 28 refuses to quantize a huge one).
    context = Context(prec=max(28, amount.adjusted() + places + 2))
    rounded = abs(amount).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP, context=context)
    sign = "-" if amount < 0 and rounded else ""
    return f"{sign}${rounded:,.{places}f}"


def plain_amount(value: Decimal | int) -> str:
    """An amount in plain notation for machines (CSV cells, API fields): ``str()`` can write ``0E-8``, a number
    spreadsheets read as text and people as a typo."""
    return f"{Decimal(value):f}"
