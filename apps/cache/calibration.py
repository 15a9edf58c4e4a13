"""Choosing a semantic-cache threshold from labelled question pairs.

A pair is two prompts and whether one's answer may be served for the other.
For each candidate threshold, a pair "hits" when its cosine similarity reaches
it; precision (hits that were right) is what a user of the cache feels, hit
rate is what it saves. ``calibrate_cache`` prints the sweep and recommends.

The gateway serves a semantic hit only when the prompts also agree on numbers
and names (apps/cache/guard.py), so the sweep can count a pair as a hit only
when it passes that check as well. Part of the pairs can be held out: the
threshold is chosen on the rest and then measured on the held-out part, which
shows how much of the precision is fitted to the file.
"""

from __future__ import annotations

import hashlib
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


def split_holdout(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(calibration, held out): about ``fraction`` of the pairs held out, chosen by a hash of their text.

    The same pair always lands on the same side, whatever the file's order or other lines.
    """
    cut = round(fraction * 1000)

    def held_out(pair: Pair) -> bool:
        return int(hashlib.sha256(f"{pair.a}\0{pair.b}".encode()).hexdigest(), 16) % 1000 < cut

    return [p for p in pairs if not held_out(p)], [p for p in pairs if held_out(p)]


def sweep(
    pairs: Sequence[Pair],
    cosines: Sequence[float],
    thresholds: Iterable[float],
    agreements: Sequence[bool] | None = None,
) -> list[Row]:
    """One Row per threshold, in the order given.

    A pair hits when its cosine is >= the threshold and, with ``agreements``,
    its entry there is True (the prompts passed the guard).
    """
    if len(pairs) != len(cosines):
        raise ValueError(f"{len(pairs)} pairs but {len(cosines)} cosines")
    if agreements is None:
        agreements = [True] * len(pairs)
    elif len(agreements) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(agreements)} agreements")
    positives = sum(p.same for p in pairs)
    negatives = len(pairs) - positives
    scored = list(zip(pairs, cosines, agreements, strict=True))
    rows = []
    for threshold in thresholds:
        true_hits = sum(1 for p, c, ok in scored if ok and c >= threshold and p.same)
        false_hits = sum(1 for p, c, ok in scored if ok and c >= threshold and not p.same)
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
