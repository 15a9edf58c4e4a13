"""What identifies a chat request to the cache.

Three views of one ``/v1/chat/completions`` payload:

- ``exact_key``: equal only for requests that would get the same answer from the
  model: same model, same conversation, same output-changing parameters.
- ``compatibility_fingerprint``: the parameters plus the system prompt, i.e.
  everything but the conversation. A semantic hit must match it exactly; only
  the conversation is compared by meaning.
- ``semantic_text``: the conversation as the text that is embedded.

Normalisation is deliberately narrow. Message text loses surrounding whitespace
(clients differ in trailing newlines, the model does not care); numbers that are
whole are written the same whether sent as ``1`` or ``1.0``; a parameter sent as
``null`` counts as absent (the API treats it so). Defaults are NOT filled in: a
missing ``temperature`` and ``temperature: 1`` stay different keys, because the
gateway forwards to providers whose defaults differ. The one exception is
``n``: one choice is the default everywhere, so a missing ``n`` and ``n: 1`` agree.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from apps.core.request import ENDPOINT_CHAT, REPLY_PRIMER, prompt_estimate
from apps.core.text import content_text

# Fields that change how or where an answer is delivered, or what is recorded
# about it, but not the answer itself. Everything else is assumed to change the
# output (safe by default: an unknown parameter splits the key, never merges it).
# Streaming and non-streaming requests share keys: a stored completion can be
# replayed as a stream and a stream's assembled completion can be stored.
DELIVERY_ONLY = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)
SYSTEM_ROLES = frozenset({"system", "developer"})

# Bounds of the conversation trace in semantic_text. The embedder reads 256
# tokens (~1,000 characters of English); the trace is kept well under that so
# the question itself is never pushed out of the window by its context.
TRACE_CHARS = 400
# The integers orjson can write. A whole float outside them (``1e300``) stays a float in a key: made an int
# it could not be encoded, and the request failed (a 500) instead of getting a key.
JSON_INT_MIN, JSON_INT_END = -(2**63), 2**64
TURN_CHARS = 160


def _canonical(value: Any) -> Any:
    """The value with whole floats as ints (``1.0`` -> ``1``) and null dict entries dropped, recursively.

    Exact type checks, most common first: the values are what orjson parsed (no subclasses), and this runs
    on every chat request (``note_replay``), where the chain of ``isinstance`` calls cost more than the work.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return value
    if kind is dict:
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if kind is list:
        return [_canonical(v) for v in value]
    if kind is float and value.is_integer() and JSON_INT_MIN <= value < JSON_INT_END:
        return int(value)
    return value


def _normalise_content(content: Any) -> Any:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return [
            {**part, "text": part["text"].strip()}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content


def _normalise_message(message: Any) -> Any:
    """The message with its content normalised, then canonical (null fields dropped); one pass."""
    if type(message) is not dict:
        return message
    normalised = {}
    for name, value in message.items():
        if name == "content":
            value = _normalise_content(value)
        if value is not None:
            normalised[name] = value if type(value) is str else _canonical(value)
    return normalised


def _parameters(payload: dict[str, Any]) -> dict[str, Any]:
    """Every output-changing field of the request except the messages, canonicalised."""
    params = {k: v for k, v in payload.items() if k != "messages" and k not in DELIVERY_ONLY}
    if params.get("n") == 1:
        del params["n"]
    return _canonical(params)


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _scoped(value: dict[str, Any], end_user: str) -> dict[str, Any]:
    # Only a named end user changes the digest, so keys of policies that share answers stay as they were.
    return {**value, "end_user": end_user} if end_user else value


def exact_key(payload: dict[str, Any], *, end_user: str = "") -> str:
    """sha256 hex of the canonical JSON of model, normalised messages and all output-changing parameters,
    and of ``end_user`` when the answer must stay with that end user (see ``CachePolicy.share_across_users``)."""
    messages = [_normalise_message(m) for m in payload.get("messages", [])]
    return _digest(_scoped({"messages": messages, "parameters": _parameters(payload)}, end_user))


def compatibility_fingerprint(payload: dict[str, Any], *, end_user: str = "") -> str:
    """sha256 hex of what a semantically similar request must share to reuse an answer.

    That is every parameter ``exact_key`` covers (model, temperature exactly,
    top_p, tools and tool_choice, response_format, max_tokens, n, seed, stop,
    logprobs, penalties, and any other non-delivery field) plus the role and
    stripped text of each system/developer message, in order; and ``end_user`` when answers must
    stay with their end user, so a semantic search never finds another end user's entries.
    """
    system = [
        [m.get("role"), content_text(m.get("content")).strip()]
        for m in payload.get("messages", [])
        if isinstance(m, dict) and m.get("role") in SYSTEM_ROLES
    ]
    return _digest(_scoped({"system": system, "parameters": _parameters(payload)}, end_user))


# What reaches the model before the first message, in the order providers cache prompts (tools first).
_PREFIX_FIELDS = ("tools", "functions", "response_format")


def static_prefix(payload: dict[str, Any]) -> tuple[str, int]:
    """sha256 hex and estimated tokens of the part of a chat request that providers' prompt caching can
    reuse: the tool definitions and response format, then the system/developer messages before the first
    other message (normalised as for ``exact_key``). ("", 0) when there is none."""
    leading = []
    for message in payload.get("messages", []):
        if not isinstance(message, dict) or message.get("role") not in SYSTEM_ROLES:
            break
        leading.append(message)
    prefix: dict[str, Any] = {name: payload[name] for name in _PREFIX_FIELDS if payload.get(name)}
    if not leading and not prefix:
        return "", 0
    tokens = prompt_estimate(ENDPOINT_CHAT, {**prefix, "messages": leading}) - REPLY_PRIMER
    return _digest(_canonical({**prefix, "messages": [_normalise_message(m) for m in leading]})), tokens


def _turn(message: dict[str, Any]) -> str:
    parts = [content_text(message.get("content"))]
    for call in message.get("tool_calls") or []:
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    text = " ".join(" ".join(parts).split())
    return f"{message.get('role', '')}: {text[:TURN_CHARS]}"


def semantic_text(messages: list[dict[str, Any]]) -> str:
    """The text embedded for a semantic lookup: the last user message, then a trace of the other turns.

    The last user message alone is unsafe: "and for Android?" means something
    different after every conversation. So the other non-system turns follow it
    as ``role: text`` (whitespace collapsed, each cut to TURN_CHARS, most recent
    first, at most TRACE_CHARS in all), which pulls the vectors of the same
    follow-up in different conversations apart while leaving a single-turn
    request (the common case, and what calibrate_cache measures) as its bare
    question. The question comes first so that it always falls inside the
    embedder's 256-token window; system prompts are left out because the
    compatibility fingerprint already has to match them exactly.
    """
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") not in SYSTEM_ROLES]
    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].get("role") == "user"), None)
    question = " ".join(content_text(turns[last_user].get("content")).split()) if last_user is not None else ""
    trace: list[str] = []
    used = 0
    for i in range(len(turns) - 1, -1, -1):
        if i == last_user:
            continue
        turn = _turn(turns[i])
        if used + len(turn) > TRACE_CHARS:
            break
        trace.append(turn)
        used += len(turn)
    return "\n\n".join(part for part in (question, " | ".join(trace)) if part)
