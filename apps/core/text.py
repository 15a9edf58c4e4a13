"""Text out of requests and answers, and what it is worth in tokens.

One reading of message content for everything that looks at a prompt's text
(routing conditions, the cache's deny-list, keys and embedded text): a string
is itself; an array's text parts (and the strings of a legacy ``prompt``
array) are joined with a newline, so parts stay apart for a regex or a
deny-list prefix, and text embedded for the cache collapses whitespace anyway.
Parts without text (images, audio) add nothing.

Token counts here are estimates: ``text_tokens`` an upper bound (what budgets
reserve), ``completion_estimate`` a plain ~4 characters per token (what a row
is billed when the provider reports no usage, marked estimated).
"""

from __future__ import annotations

from typing import Any

import orjson


def content_text(content: Any) -> str:
    """The text of a message's ``content`` (or of a ``prompt``/``input``): a string, or its parts' text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def last_user_text(payload: dict[str, Any]) -> str:
    """The last user message's text (chat), or the prompt (legacy completions), or the input (embeddings)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
        return ""
    for field in ("prompt", "input"):
        if field in payload:
            return content_text(payload[field])
    return ""


def choice_text(choice: Any, field: str) -> str:
    """The text of one answer choice (its ``message`` or stream ``delta``, else legacy ``text``); "" when
    the choice is malformed."""
    if not isinstance(choice, dict):
        return ""
    inner = choice.get(field)
    content = inner.get("content") if isinstance(inner, dict) else None
    if not isinstance(content, str) or not content:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def answer_text(completion: dict[str, Any]) -> str:
    """The first choice's text of a chat or legacy completion ("" when the answer is malformed)."""
    choices = completion.get("choices")
    return choice_text(choices[0], "message") if isinstance(choices, list) and choices else ""


# --- token estimates ------------------------------------------------------------------------------


def text_tokens(text: str) -> int:
    """An upper bound on ``text``'s tokens for budgets: ~4 ASCII characters per token, and every
    non-ASCII character counted as at least one token more (CJK text runs ~1 token per character,
    which a characters/4 estimate would undercount four times)."""
    if not text:
        return 0
    ascii_estimate = (len(text) + 3) // 4
    if text.isascii():
        return ascii_estimate
    return ascii_estimate + len(text.encode("utf-8", "surrogatepass")) - len(text)


def json_object(body: bytes) -> dict[str, Any] | None:
    """A JSON body that is an object, or None (not JSON, or another JSON value)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def json_tokens(value: Any) -> int:
    """An upper bound on the tokens of a JSON value (a tool definition, a schema) sent as text."""
    try:
        return text_tokens(orjson.dumps(value).decode())
    except (TypeError, orjson.JSONEncodeError):
        return text_tokens(str(value))


def completion_estimate(text: str) -> int:
    """Completion tokens of an answer the provider gave no usage for: ~4 characters per token."""
    return (len(text) + 3) // 4 if text else 0
