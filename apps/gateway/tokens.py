"""Local token estimates, used only where no provider count exists yet.

Exact counts come from the provider's ``usage``. We estimate (a) the prompt
size before forwarding, for worst-case budget reservations, and (b) a stream's
completion when the provider sent no usage chunk. The estimate is ~4 characters
per token plus OpenAI's per-message framing, which overcounts slightly for
English prose; erring high is the safe direction for both uses.
"""

from __future__ import annotations

from typing import Any

PER_MESSAGE_OVERHEAD = 3
REPLY_PRIMER = 3


def estimate_text(text: str) -> int:
    return (len(text) + 3) // 4 if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, images, ...]
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def estimate_messages(messages: list[Any]) -> int:
    total = REPLY_PRIMER
    for message in messages:
        if isinstance(message, dict):
            total += PER_MESSAGE_OVERHEAD + estimate_text(_content_text(message.get("content")))
    return total


def estimate_prompt(prompt: Any) -> int:
    if isinstance(prompt, str):
        return estimate_text(prompt)
    if isinstance(prompt, list):
        if all(isinstance(item, int) for item in prompt):
            return len(prompt)  # already token ids
        return sum(estimate_prompt(item) for item in prompt)
    return 0
