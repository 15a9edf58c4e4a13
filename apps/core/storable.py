"""JSON that Postgres can store, read from hostile text: request bodies, uploaded JSONL, a provider's output,
events carrying what an app sent.

Python's ``json`` module reads ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON) and lone surrogates
(``"\\ud800"``); Postgres refuses all three in ``jsonb``, and refuses the character ``\\u0000`` in ``jsonb``
and ``text``. Read with ``orjson`` (strict RFC 8259: it refuses the first two) and checked for NUL, such a
value is refused where it arrives, with a message, rather than failing an insert later as a 500; where a
value must be kept whatever it holds (an app's stored conversation), ``without_nul`` makes it storable.
"""

from __future__ import annotations

import re
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
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


# The JSON escape of NUL, not preceded by an escaped backslash (``\\\\u0000`` is the text "\\u0000").
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def without_nul(value: Any) -> Any:
    """``value`` (parsed JSON) with each NUL in its strings and keys replaced by U+FFFD, as a decoder marks
    a character it cannot keep; ``value`` itself when it holds none."""
    if not holds_nul(value):
        return value
    return orjson.loads(_NUL_ESCAPE.sub(rb"\1\\ufffd", orjson.dumps(value)))
