"""Choosing a semantic-cache threshold from labelled question pairs.

A pair is two prompts and whether one's answer may be served for the other.
For each candidate threshold, a pair "hits" when its cosine similarity reaches
it; precision (hits that were right) is what a user of the cache feels, hit
rate is what it saves. ``calibrate_cache`` prints the sweep and recommends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_THRESHOLDS = tuple(round(0.70 + i / 100, 2) for i in range(30))  # 0.70 ... 0.99


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    same: bool  # True: b's answer is a correct answer to a


@dataclass(frozen=True, slots=True)
class Row:
    """The outcome of one threshold over all pairs. Rates are fractions in [0, 1]."""

    threshold: float
    hits: int
    hit_rate: float  # hits / all pairs
    precision: float | None  # same-pairs among hits; None when nothing hits
    false_hit_rate: float  # hits among different-pairs
    recall: float  # hits among same-pairs


def parse_pairs(lines: Iterable[str]) -> list[Pair]:
    """Pairs from JSON lines ``{"a": str, "b": str, "same": bool}``; blank lines are skipped.

    Raises ValueError naming the (1-based) line of the first malformed one.
    """
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not (isinstance(row["a"], str) and isinstance(row["b"], str) and isinstance(row["same"], bool)):
                raise TypeError("a and b must be strings, same a boolean")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {number}: {exc}") from None
        pairs.append(Pair(row["a"], row["b"], row["same"]))
    return pairs


def sweep(pairs: Sequence[Pair], cosines: Sequence[float], thresholds: Iterable[float]) -> list[Row]:
    """One Row per threshold, in the order given; a pair hits when its cosine is >= the threshold."""
    if len(pairs) != len(cosines):
        raise ValueError(f"{len(pairs)} pairs but {len(cosines)} cosines")
    positives = sum(p.same for p in pairs)
    negatives = len(pairs) - positives
    rows = []
    for threshold in thresholds:
        true_hits = sum(1 for p, c in zip(pairs, cosines, strict=True) if c >= threshold and p.same)
        false_hits = sum(1 for p, c in zip(pairs, cosines, strict=True) if c >= threshold and not p.same)
        hits = true_hits + false_hits
        rows.append(
            Row(
                threshold=threshold,
                hits=hits,
                hit_rate=hits / len(pairs) if pairs else 0.0,
                precision=true_hits / hits if hits else None,
                false_hit_rate=false_hits / negatives if negatives else 0.0,
                recall=true_hits / positives if positives else 0.0,
            )
        )
    return rows


def recommend(rows: Sequence[Row], target: float) -> Row | None:
    """The lowest-threshold row whose precision reaches target, or None when none does.

    Lowest, because among thresholds that are precise enough it serves the most
    hits. A threshold where nothing hits has no precision and is never chosen.
    """
    eligible = [r for r in rows if r.precision is not None and r.precision >= target]
    return min(eligible, key=lambda r: r.threshold, default=None)
