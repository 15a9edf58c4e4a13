"""JSONL as OpenAI's Files and Batch APIs write it: one JSON value a line (see ``apps.core.storable`` for
reading each one)."""

from __future__ import annotations

from collections.abc import Iterator


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines of JSONL text with their numbers from 1. Lines end at ``\\n`` (and a ``\\r`` before it)
    only: ``str.splitlines`` also breaks at U+2028, U+0085 and other separators that JSON strings may hold."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")
