"""Price: the provider's token counts (or our estimate when it gives none we can believe), at the target's price.

Pure functions of an answer: no I/O. A row whose usage we had to estimate is
marked ``usage_estimated``; a model without a price costs 0 and its decision
says ``unpriced``.
"""

from __future__ import annotations

from typing import Any

from apps.core.events import clean_count
from apps.core.text import choice_text, completion_estimate
from apps.gateway.call import Call
from apps.gateway.stages.plan import Target
from apps.gateway.stages.relay import SseRelay


def believable(usage: Any) -> bool:
    """Whether a provider's ``usage`` is an object with non-negative integer prompt and completion counts."""
    if not isinstance(usage, dict):
        return False
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0


def estimate_completion(data: dict[str, Any]) -> int:
    """Completion tokens of a non-streamed answer whose provider reported no usage."""
    choices = data.get("choices")
    parts = [choice_text(choice, "message") for choice in choices] if isinstance(choices, list) else []
    return completion_estimate("".join(parts))


def apply_usage(call: Call, target: Target, usage: Any) -> None:
    """Take the provider's token counts (or keep our estimates) and price them.

    Usage is believed only when it is an object whose prompt and completion counts are
    non-negative integers (past the ledger's column they are capped); anything else
    from an upstream keeps our estimates and marks the row ``usage_estimated``.
    """
    if believable(usage):
        call.prompt_tokens = clean_count(usage["prompt_tokens"])
        call.completion_tokens = clean_count(usage["completion_tokens"])
        details = usage.get("prompt_tokens_details")
        details = details if isinstance(details, dict) else {}
        call.cached_tokens = min(clean_count(details.get("cached_tokens")), call.prompt_tokens)
        # Prompt-cache writes: Anthropic reports them (apps.core.anthropic names them so), OpenAI does not.
        written = clean_count(details.get("cache_write_tokens"))
        call.cache_write_tokens = min(written, call.prompt_tokens - call.cached_tokens)
    else:
        call.usage_estimated = True
    counts = {
        "prompt_tokens": call.prompt_tokens,
        "cached_tokens": call.cached_tokens,
        "completion_tokens": call.completion_tokens,
        "cache_write_tokens": call.cache_write_tokens,
    }
    if target.price is not None:
        call.cost = target.price.cost(**counts)
    else:
        call.decision.unpriced = True
    if target.counterfactual_price is not None:
        call.counterfactual_cost = target.counterfactual_price.cost(**counts)


def price_answer(call: Call, target: Target, data: dict[str, Any]) -> None:
    """Price a whole (non-streamed) answer: its usage, or its text's estimate when the usage is missing or wrong."""
    usage = data.get("usage")
    if not believable(usage):
        call.completion_tokens = estimate_completion(data)
    apply_usage(call, target, usage)


def price_stream(call: Call, target: Target, sse: SseRelay) -> None:
    """Price a relayed stream: its usage chunk, or what it sent, estimated."""
    if not believable(sse.usage):
        # No usable usage chunk (a disconnect, a truncated or cut-off stream, a provider that omits it
        # or garbles it): bill what we saw, estimated, never $0.
        call.completion_tokens = sse.estimate_completion_tokens()
    apply_usage(call, target, sse.usage)


def cacheable(completion: dict[str, Any]) -> bool:
    """Only whole, unfiltered, well-formed answers are cached: no refusals, no content-filter stops."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), (str, type(None)))
            or choice.get("finish_reason") not in ("stop", "length", "tool_calls")
            or message.get("refusal")
        ):
            return False
    return True
