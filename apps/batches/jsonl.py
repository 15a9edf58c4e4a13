"""JSON that Postgres can store, read from hostile text: request bodies, uploaded JSONL, a provider's output.

Python's ``json`` module reads ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON) and lone surrogates
(``"\\ud800"``); Postgres refuses all three in ``jsonb``, and refuses the character ``\\u0000`` in ``jsonb``
and ``text``. Read with ``orjson`` (strict RFC 8259: it refuses the first two) and checked for NUL, such a
value is refused where it arrives, with a message, rather than failing the insert later as a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson


class NotStorable(ValueError):
    """Text that is not JSON, or JSON that holds a NUL character; the message completes "The body …"."""


def loads_strict(raw: str | bytes) -> Any:
    """``raw`` parsed as strict JSON: no ``NaN`` or ``Infinity``, no lone surrogate."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotStorable(f"is not valid JSON ({exc.msg})") from None


def loads_storable(raw: str | bytes) -> Any:
    """``raw`` parsed as strict JSON with no NUL character in any string or key: all of it can be stored."""
    value = loads_strict(raw)
    escaped = b"\\u0000" in raw if isinstance(raw, bytes) else "\\u0000" in raw
    if escaped and holds_nul(value):  # a NUL can only come from that escape: raw control characters are not JSON
        raise NotStorable("holds the character \\u0000 in a string, which cannot be stored")
    return value


def holds_nul(value: Any) -> bool:
    """Whether any string or key in a parsed JSON value holds NUL. A loop, not recursion: JSON nests
    up to 1,024 levels deep in orjson, past Python's recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, inner in item.items():
                if "\x00" in key:
                    return True
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines of JSONL text with their numbers from 1. Lines end at ``\\n`` (and a ``\\r`` before it)
    only: ``str.splitlines`` also breaks at U+2028, U+0085 and other separators that JSON strings may hold."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")
