"""CSV for spreadsheets: every export writes through here, so no cell can run as a formula.

Tenants control strings that end up in exports (feature tags, end-user ids, key and project names,
models). Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@``
as a formula (``=HYPERLINK(...)`` in finance's spreadsheet), and a leading tab or carriage return can
hide one. Such a cell gets a leading apostrophe, OWASP's advice: spreadsheets show it as text. Plain
numbers (``-0.25``, ``+3``, ``1e-6``) are left alone so that amounts stay numbers.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from apps.core.money import plain_amount

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value``, with an apostrophe in front when it is text a spreadsheet would run as a formula.

    A ``Decimal`` is written in plain notation: a difference of two amounts can be ``0E-8``, which
    spreadsheets read as text and people as a typo.
    """
    if isinstance(value, Decimal) and value.is_finite() and "E" in str(value):
        return plain_amount(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a stream."""

    def write(self, value: str) -> str:
        return value


def csv_lines(rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """Each row as one CSV line, cells neutralised: a streamed download's body, or a file's lines."""
    writer = csv.writer(_Echo())
    for row in rows:
        yield writer.writerow([safe_cell(cell) for cell in row])
