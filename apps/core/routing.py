"""Routing rules as the snapshot holds them, and how they are evaluated: plain data, no I/O.

The gateway holds each project's active rules (as ``RuleView``) in its policy
snapshot and calls ``first_match`` per request; ``eval_route`` replays a rule
with the same split and confidence rules. Everything here is in-memory and
cheap. The regex condition reads the last user message only when a rule that
gets that far has one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apps.core.patterns import Pattern
from apps.core.text import last_user_text


@dataclass(frozen=True, slots=True)
class TargetView:
    provider_id: int
    model: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class CascadeView:
    threshold: float
    tokens: int
    aggregate: str  # "min" | "mean" | "joint"
    escalate_new_labels: bool
    labels: frozenset[str]


@dataclass(frozen=True, slots=True)
class RuleView:
    id: int
    name: str
    action: str  # "route" | "split" | "cascade"
    primaries: tuple[TargetView, ...]
    fallbacks: tuple[TargetView, ...] = ()
    shadow: TargetView | None = None
    shadow_fraction: float = 0.0
    cascade: CascadeView | None = None
    # A cascade trial: the shadow call asks for logprobs and its answer's confidence is measured as this
    # cascade would measure it (only ``tokens`` and ``aggregate`` count).
    shadow_confidence: CascadeView | None = None
    # A history-window trial: the shadow copy keeps the system messages and the last N others.
    shadow_history_turns: int | None = None
    models: frozenset[str] = frozenset()
    features: frozenset[str] = frozenset()
    end_users: frozenset[str] = frozenset()
    api_key_id: int | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    tools: str = "any"  # "any" | "with" | "without"
    regex: Pattern | None = None  # RE2, searches the first SCAN_CHARS characters

    def matches(self, facts: RequestFacts) -> bool:
        if self.models and facts.model not in self.models:
            return False
        if self.features and facts.feature not in self.features:
            return False
        if self.end_users and facts.end_user not in self.end_users:
            return False
        if self.api_key_id is not None and facts.api_key_id != self.api_key_id:
            return False
        if self.min_prompt_tokens is not None and facts.prompt_tokens < self.min_prompt_tokens:
            return False
        if self.max_prompt_tokens is not None and facts.prompt_tokens > self.max_prompt_tokens:
            return False
        if self.tools != "any" and facts.has_tools != (self.tools == "with"):
            return False
        return self.regex is None or self.regex.search(facts.last_user_text())


class RequestFacts:
    """What rules can match on, taken from one request."""

    __slots__ = ("model", "feature", "end_user", "api_key_id", "prompt_tokens", "has_tools", "_payload", "_last")

    def __init__(
        self, *, model: str, feature: str, end_user: str, api_key_id: int, prompt_tokens: int, payload: dict[str, Any]
    ) -> None:
        self.model = model
        self.feature = feature
        self.end_user = end_user
        self.api_key_id = api_key_id
        self.prompt_tokens = prompt_tokens
        self.has_tools = bool(payload.get("tools") or payload.get("functions"))
        self._payload = payload
        self._last: str | None = None

    def last_user_text(self) -> str:
        if self._last is None:
            self._last = last_user_text(self._payload)
        return self._last


def first_match(rules: Iterable[RuleView], facts: RequestFacts) -> RuleView | None:
    for rule in rules:
        if rule.matches(facts):
            return rule
    return None


def split_order(targets: Sequence[TargetView], rng: random.Random | None = None) -> list[TargetView]:
    """The targets of a split: one drawn by weight first, the others after it by weight (as fallbacks)."""
    draw = (rng or random).random() * sum(t.weight for t in targets)
    for index, target in enumerate(targets):
        draw -= target.weight
        if draw < 0:
            rest = sorted((t for i, t in enumerate(targets) if i != index), key=lambda t: -t.weight)
            return [target, *rest]
    return list(targets)  # all weights zero: keep the written order


def confidence(completion: dict[str, Any], *, tokens: int, aggregate: str) -> float | None:
    """Confidence of a chat completion from its logprobs, lowest over its choices; None without logprobs.

    Per choice: the probabilities of the first ``tokens`` answer tokens, combined
    as their minimum, mean or product (joint probability).
    """
    choices = completion.get("choices") or ()
    return _lowest([((choice or {}).get("logprobs") or {}).get("content") for choice in choices], tokens, aggregate)


def response_confidence(response: dict[str, Any], *, tokens: int, aggregate: str) -> float | None:
    """Confidence of a Responses API answer from its output texts' logprobs (``include:
    ["message.output_text.logprobs"]``), lowest over its output texts, as ``confidence`` reads a
    completion's choices; None when it has no output text, or one without logprobs."""
    texts = [
        part.get("logprobs")
        for item in response.get("output") or ()
        if (item or {}).get("type") == "message"
        for part in item.get("content") or ()
        if (part or {}).get("type") == "output_text"
    ]
    return _lowest(texts, tokens, aggregate) if texts else None


def _lowest(sequences: list[Any], tokens: int, aggregate: str) -> float | None:
    """The lowest confidence over ``sequences`` of logprob entries; None when one of them is empty."""
    lowest: float | None = None
    for content in sequences:
        if not content:
            return None
        probabilities = [_probability(entry["logprob"]) for entry in content[:tokens]]
        if aggregate == "mean":
            value = sum(probabilities) / len(probabilities)
        elif aggregate == "joint":
            value = math.prod(probabilities)
        else:
            value = min(probabilities)
        lowest = value if lowest is None else min(lowest, value)
    return lowest


def answer_confidence(completion: dict[str, Any], *, tokens: int, aggregate: str) -> float | None:
    """``confidence``, with malformed logprobs counted as none: what a cascade decides on and what a cascade
    trial records, so that the two never differ."""
    try:
        return confidence(completion, tokens=tokens, aggregate=aggregate)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None


def _probability(logprob: Any) -> float:
    """exp(logprob) for a real log-probability (<= 0); anything else, e.g. 710 (past exp's range) or NaN,
    is a malformed answer (ValueError), never a confident one."""
    value = float(logprob)
    if not value <= 0.0:
        raise ValueError(f"not a log-probability: {logprob!r}")
    return math.exp(value)


_PUNCTUATION = str.maketrans("", "", ".,!?;:'\"`()[]{}")


def normalize_text(text: str) -> str:
    """Text compared loosely: case-folded, punctuation dropped, whitespace collapsed."""
    return " ".join(text.casefold().translate(_PUNCTUATION).split())
