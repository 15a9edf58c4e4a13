"""Tenant-written regular expressions, run in linear time on capped text.

Routing-rule conditions and cache deny-list ``re:`` patterns are written by leads and run on the
gateway's shared event loop against end-user text. Python's ``re`` backtracks: ``(a+)+$`` on
``"a" * 40 + "!"`` takes longer than the universe, freezing every tenant on that process. RE2
(``google-re2``) runs in time linear in the text, and refuses at compile time what it cannot do
that way (backreferences, lookaround, possessive quantifiers): such patterns are refused when saved.
The text searched is capped at ``SCAN_CHARS`` characters (its beginning), so even linear work is
bounded per request. Patterns are compiled once per policy snapshot, never per request.
"""

from __future__ import annotations

from typing import Any

import re2

# The first 16 Ki characters of the text are searched; a match further in is not seen. Measured on
# the dev box: (a+)+$ over a full 16 Ki of "a" takes ~0.3 ms (RE2's DFA), so even a hostile pattern
# costs the shared event loop about that per pattern and request.
SCAN_CHARS = 16 * 1024
# At most this many patterns per cache policy (each is searched on every request it applies to).
MAX_PATTERNS = 50
# RE2's memory budget for one compiled pattern; bigger ones (``a{1000}{1000}``) are refused.
MAX_PROGRAM_BYTES = 1 << 20


class PatternError(ValueError):
    """The pattern is not valid RE2 syntax, or needs a feature RE2 does not have."""


class Pattern:
    """A compiled RE2 pattern that searches at most ``SCAN_CHARS`` characters of its text."""

    __slots__ = ("source", "_regex")

    def __init__(self, source: str, *, ignore_case: bool = False) -> None:
        options = re2.Options()
        options.log_errors = False
        options.case_sensitive = not ignore_case
        options.max_mem = MAX_PROGRAM_BYTES
        options.never_capture = True  # only "does it match" is asked: lets RE2 use its DFA (~6x faster)
        try:
            self._regex: Any = re2.compile(source, options)
        except re2.error as exc:
            detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise PatternError(
                f"{detail} (patterns use RE2 syntax: no backreferences or lookaround)" if detail else "invalid pattern"
            ) from None
        self.source = source

    def search(self, text: str) -> bool:
        return self._regex.search(text[:SCAN_CHARS]) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.source!r})"
