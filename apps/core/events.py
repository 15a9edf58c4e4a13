"""Stream events fitted to their columns: every field fits its column before it is inserted.

The gateway writes ledger, cache and shadow events to Redis streams; consumers
bulk-insert them into Postgres. A value a column refuses (too long, a NUL
character, a count past ``integer``) would fail the insert of its whole batch,
so each consumer cleans every event before it inserts it. Cache and shadow
events are also cleaned before the XADD. Ledger events are not: they are one
per request, the consumer's clean is the one that guards the columns, and
cleaning at the source too cost the hot path about 4% of a request's
instructions. The column limits are the constants below; the Django models use
the same constants, so the two cannot drift apart.

Cleaning is cheap: strings that are short and printable (the usual case) pass
through after one length check and one ``isprintable``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from apps.core.pricing import tier_name
from apps.core.responses import RESPONSE_ID_MAX

# --- stream entries ---------------------------------------------------------------------

EVENT_FIELD = b"e"  # every stream entry holds its event as JSON in this field
BODY_FIELD = b"body"  # a cache store also holds the answer, as the provider returned it

# --- column limits (the models import these) -------------------------------------------

REQUEST_ID_MAX = 64
ENDPOINT_MAX = 40
FEATURE_MAX = 100
END_USER_MAX = 200
MODEL_MAX = 200
ERROR_CODE_MAX = 100
CACHE_HIT_MAX = 10
ROUTE_MAX = 300
NAMESPACE_MAX = 100
CACHE_KEY_MAX = 64  # exact keys and fingerprints are hex SHA-256 digests
# Postgres ``integer`` (PositiveIntegerField): token counts and milliseconds.
INT_MAX = 2_147_483_647
# Postgres ``smallint`` (PositiveSmallIntegerField): HTTP status codes.
SMALLINT_MAX = 32_767
# Ledger money columns: numeric(18, 8).
LEDGER_COST_DIGITS, LEDGER_COST_PLACES = 18, 8
# Shadow comparison money columns: numeric(18, 10).
SHADOW_COST_DIGITS, SHADOW_COST_PLACES = 18, 10

# C0 and C1 control characters and DEL. Postgres refuses NUL in text; the others
# have no place in a tag, a model name or a route, and break CSV and terminals.
_CONTROL = dict.fromkeys([*range(32), 127, *range(128, 160)])


def clean_text(value: Any, limit: int | None) -> str:
    """``value`` as a string without control characters, cut to ``limit`` characters (None: no cut)."""
    if not isinstance(value, str):
        value = "" if value is None else str(value)
    if not value.isprintable():
        # isprintable() is also False for non-ASCII spaces and the like: only controls are removed.
        value = value.translate(_CONTROL)
    return value if limit is None or len(value) <= limit else value[:limit]


def clean_multiline(value: Any) -> str:
    """Free text (answers, prompts) keeps its newlines and tabs; only NUL, which Postgres refuses, goes."""
    if not isinstance(value, str):
        value = "" if value is None else str(value)
    return value.replace("\x00", "") if "\x00" in value else value


def clean_count(value: Any, limit: int = INT_MAX) -> int:
    """A count from anywhere (an upstream's usage, an event) as an int in ``0..limit``; garbage is 0."""
    if type(value) is int:  # the usual case; bool is not a count
        return value if 0 <= value <= limit else (0 if value < 0 else limit)
    if isinstance(value, float):
        if not math.isfinite(value):
            return limit if value == math.inf else 0
        return min(max(int(value), 0), limit)
    if isinstance(value, str):
        try:
            return clean_count(float(value), limit) if value.strip() else 0
        except ValueError:
            return 0
    return 0


def clean_optional_count(value: Any, limit: int = INT_MAX) -> int | None:
    return None if value is None else clean_count(value, limit)


def _money_bounds(digits: int, places: int) -> tuple[Decimal, Decimal]:
    """The largest value of ``numeric(digits, places)`` and its smallest step."""
    step = Decimal(10) ** -places
    return Decimal(10) ** (digits - places) - step, step


def _money_canonical(digits: int, places: int) -> tuple[re.Pattern[str], str]:
    """What ``clean_money`` returns for a positive amount that fits (no sign, no exponent, no leading
    zero, exactly ``places`` decimals), and its one zero, which it returns as "0"."""
    return re.compile(rf"(?:0|[1-9][0-9]{{0,{digits - places - 1}}})\.[0-9]{{{places}}}"), "0." + "0" * places


# Every ledger row cleans two amounts: the bounds are computed once, not twice per request (~4 µs each).
_MONEY_BOUNDS = {
    (LEDGER_COST_DIGITS, LEDGER_COST_PLACES): _money_bounds(LEDGER_COST_DIGITS, LEDGER_COST_PLACES),
    (SHADOW_COST_DIGITS, SHADOW_COST_PLACES): _money_bounds(SHADOW_COST_DIGITS, SHADOW_COST_PLACES),
}
_MONEY_CANONICAL = {key: _money_canonical(*key) for key in _MONEY_BOUNDS}
_LEDGER_MONEY_CANONICAL = _MONEY_CANONICAL[(LEDGER_COST_DIGITS, LEDGER_COST_PLACES)]


def clean_money(value: Any, *, digits: int = LEDGER_COST_DIGITS, places: int = LEDGER_COST_PLACES) -> str:
    """A non-negative amount that fits ``numeric(digits, places)``, as a string; garbage is "0"."""
    if type(value) is str:
        # Already in its column's form (an event cleaned at the source, a price the gateway wrote that
        # way): the Decimal round trip below would give the same string back, at ~1 µs an amount.
        if digits == LEDGER_COST_DIGITS and places == LEDGER_COST_PLACES:
            canonical: tuple[re.Pattern[str], str] | None = _LEDGER_MONEY_CANONICAL
        else:
            canonical = _MONEY_CANONICAL.get((digits, places))
        if canonical is not None and canonical[0].fullmatch(value):
            return "0" if value == canonical[1] else value
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        return "0"
    if not amount.is_finite() or amount <= 0:
        return "0"
    bounds = _MONEY_BOUNDS.get((digits, places))
    ceiling, step = bounds if bounds is not None else _money_bounds(digits, places)
    if amount > ceiling:
        amount = ceiling
    return format(amount.quantize(step), "f")


def clean_id(value: Any) -> int | None:
    """``value`` if it can be a row id (a positive ``bigint``), else None."""
    return value if type(value) is int and 0 < value <= 2**63 - 1 else None


def _timestamp(value: Any) -> float:
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        return 0.0
    # Postgres timestamps end in the year 294276; the ledger's do long before.
    return stamp if math.isfinite(stamp) and 0 <= stamp < 253_402_300_800 else 0.0


_LEDGER_TEXT = (
    ("endpoint", ENDPOINT_MAX),
    ("feature", FEATURE_MAX),
    ("end_user", END_USER_MAX),
    ("requested_model", MODEL_MAX),
    ("served_model", MODEL_MAX),
    ("error_code", ERROR_CODE_MAX),
    ("cache_hit", CACHE_HIT_MAX),
    ("route", ROUTE_MAX),
    ("cache_key", CACHE_KEY_MAX),
    ("prefix_key", CACHE_KEY_MAX),
    ("embedding_key", CACHE_KEY_MAX),
    ("background_response_id", RESPONSE_ID_MAX),
)
_LEDGER_COUNTS = (
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "latency_ms",
    "prefix_tokens",
    "turns",
)


def ledger_event_clean(event: dict[str, Any]) -> dict[str, Any]:
    """Fit a ledger event to ``LedgerEntry``'s columns, in place; returns it.

    Identity fields (request id, organisation, project) are not invented: an event
    without them is still refused by the consumer and dead-lettered.
    """
    event["request_id"] = clean_text(event.get("request_id"), REQUEST_ID_MAX)
    event["created_at"] = _timestamp(event.get("created_at"))
    # A value that already fits (every value, when the consumer re-cleans what the gateway cleaned) is
    # left as it is, tested inline: the calls and stores cost the consumer ~2 µs an event.
    for name, limit in _LEDGER_TEXT:
        value = event.get(name)
        if type(value) is not str or len(value) > limit or not value.isprintable():
            event[name] = clean_text(value, limit)
    for name in _LEDGER_COUNTS:
        value = event.get(name)
        if type(value) is not int or not 0 <= value <= INT_MAX:
            event[name] = clean_count(value)
    # Reasoning is part of the output: never more than the completion tokens.
    event["reasoning_tokens"] = min(clean_count(event.get("reasoning_tokens")), event["completion_tokens"])
    event["service_tier"] = tier_name(event.get("service_tier"))
    for name in ("ttft_ms", "max_tokens"):
        event[name] = clean_optional_count(event.get(name))
    event["status_code"] = clean_count(event.get("status_code"), SMALLINT_MAX)
    event["cost"] = clean_money(event.get("cost"))
    event["counterfactual_cost"] = clean_money(event.get("counterfactual_cost"))
    for name in ("api_key_id", "provider_id", "route_rule_id"):
        event[name] = clean_id(event.get(name))
    for name in ("usage_estimated", "streamed", "possibly_billed"):
        event[name] = event.get(name) is True
    event["decision"] = decision_clean(event.get("decision"))
    return event


_DECISION_TEXT = frozenset({"kind", "alias", "action", "model", "cascade", "reason", "cache_hit", "part"})
_DECISION_FLAGS = frozenset({"limits_unchecked", "unpriced"})
_DECISION_LIST_MAX = 100  # far more targets or budgets than a rule or organisation has


def decision_clean(value: Any) -> dict[str, Any] | None:
    """A route decision (``apps.core.route.RouteDecision.as_json``) fitted for the ``decision`` column:
    its known fields only, text without control characters and cut to length, ids and counts in range;
    anything that is not an object is None."""
    if not isinstance(value, dict):
        return None
    clean: dict[str, Any] = {}
    for name, item in value.items():
        if name in _DECISION_TEXT:
            clean[name] = clean_text(item, MODEL_MAX)
        elif name in _DECISION_FLAGS:
            clean[name] = item is True
        elif name == "rule_id":
            clean[name] = clean_id(item)
        elif name == "retries":
            clean[name] = clean_count(item)
        elif name == "would_block" and isinstance(item, list):
            clean[name] = [i for i in map(clean_id, item[:_DECISION_LIST_MAX]) if i is not None]
        elif name == "tried" and isinstance(item, list):
            clean[name] = [
                {field: clean_text(tried.get(field), MODEL_MAX) for field in ("model", "provider", "outcome")}
                for tried in item[:_DECISION_LIST_MAX]
                if isinstance(tried, dict)
            ]
        elif name == "pruned" and isinstance(item, list):
            clean[name] = [
                {"what": clean_text(pruned.get("what"), MODEL_MAX), "before": clean_count(pruned.get("before")),
                 "after": clean_count(pruned.get("after"))}
                for pruned in item[:_DECISION_LIST_MAX]
                if isinstance(pruned, dict)
            ]  # fmt: skip
    return clean


def shadow_event_clean(event: dict[str, Any]) -> dict[str, Any]:
    """Fit a shadow comparison to ``ShadowComparison``'s columns, in place; returns it."""
    event["request_id"] = clean_text(event.get("request_id"), REQUEST_ID_MAX)
    event["created_at"] = _timestamp(event.get("created_at"))
    for name in ("primary_model", "shadow_model"):
        event[name] = clean_text(event.get(name), MODEL_MAX)
    for name in ("primary_latency_ms", "shadow_latency_ms"):
        event[name] = clean_count(event.get(name))
    event["shadow_status"] = clean_count(event.get("shadow_status"), SMALLINT_MAX)
    for name in ("primary_cost", "shadow_cost"):
        event[name] = clean_money(event.get(name), digits=SHADOW_COST_DIGITS, places=SHADOW_COST_PLACES)
    for name in ("primary_text", "shadow_text"):
        event[name] = clean_multiline(event.get(name))
    similarity = event.get("similarity")
    event["similarity"] = similarity if isinstance(similarity, float) and math.isfinite(similarity) else None
    confidence = event.get("confidence")
    event["confidence"] = confidence if isinstance(confidence, float) and 0.0 <= confidence <= 1.0 else None
    for name in ("exact_match", "normalized_match"):
        event[name] = event.get(name) is True
    return event


# Prompts a trial keeps from a disagreement, to show and to learn from, are cut to this.
TRIAL_TEXT_MAX = 1000


def _similarity(value: Any) -> float | None:
    return float(value) if isinstance(value, float) and math.isfinite(value) and -1.0 <= value <= 1.0 else None


def trial_event_clean(event: dict[str, Any]) -> dict[str, Any]:
    """Fit a semantic-cache trial's comparison to ``TrialSample``'s columns, in place; returns it."""
    event["request_id"] = clean_text(event.get("request_id"), REQUEST_ID_MAX)
    event["created_at"] = _timestamp(event.get("created_at"))
    event["prompt_similarity"] = _similarity(event.get("prompt_similarity"))
    event["answer_similarity"] = _similarity(event.get("answer_similarity"))
    for name in ("guard_agrees", "normalized_match"):
        event[name] = event.get(name) is True
    for name in ("prompt_text", "cached_prompt_text"):
        event[name] = clean_multiline(event.get(name))[:TRIAL_TEXT_MAX]
    return event


def cache_event_clean(event: dict[str, Any]) -> dict[str, Any]:
    """Fit a cache event (store or hit) to ``CacheEntry``'s columns, in place; returns it."""
    event["namespace"] = clean_text(event.get("namespace"), NAMESPACE_MAX)
    for name in ("exact_key", "fingerprint"):
        if name in event:
            event[name] = clean_text(event.get(name), CACHE_KEY_MAX)
    if "model" in event:
        event["model"] = clean_text(event.get("model"), MODEL_MAX)
    if "text" in event:
        event["text"] = clean_multiline(event.get("text"))
    if "cost" in event:
        event["cost"] = clean_money(event.get("cost"))
    if "ttl" in event:
        event["ttl"] = clean_count(event.get("ttl"))
    event["at"] = _timestamp(event.get("at"))
    return event
