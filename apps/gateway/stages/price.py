"""Price: the provider's token counts (or our estimate when it gives none we can believe), at the target's price.

Pure functions of an answer: no I/O. A row whose usage we had to estimate is
marked ``usage_estimated``; a model without a price costs 0 and its decision
says ``unpriced``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apps.core.events import clean_count
from apps.core.pricing import PriceRow, tier_name
from apps.core.responses import usage_counts
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
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else 0
        call.reasoning_tokens = min(clean_count(reasoning), call.completion_tokens)
    else:
        call.usage_estimated = True
    charge(call, target)


def charge(call: Call, target: Target) -> None:
    """Price the call's token counts at the target's rates for the tier it was served at."""
    price, counterfactual = target.price, target.counterfactual_price
    if price is not None:
        call.cost = _cost(price, call)
    else:
        call.decision.unpriced = True
    if counterfactual is not None:
        # Served as asked (no rule changed the model): what it would have cost is what it cost.
        call.counterfactual_cost = call.cost if counterfactual is price else _cost(counterfactual, call)


def _cost(row: PriceRow, call: Call) -> Decimal:
    return row.cost(
        prompt_tokens=call.prompt_tokens, cached_tokens=call.cached_tokens, completion_tokens=call.completion_tokens,
        cache_write_tokens=call.cache_write_tokens, reasoning_tokens=call.reasoning_tokens, tier=call.service_tier,
    )  # fmt: skip


def price_response(call: Call, target: Target, response: dict[str, Any] | None, estimate: int) -> None:
    """Price a Responses API answer (whole, or a stream's terminal event): its usage and the tier it was
    served at, or ``estimate`` completion tokens when it has no usage we can believe."""
    counts = usage_counts(response.get("usage")) if response is not None else None
    if counts is not None:
        call.prompt_tokens, call.cached_tokens = clean_count(counts.prompt_tokens), counts.cached_tokens
        call.completion_tokens, call.reasoning_tokens = clean_count(counts.completion_tokens), counts.reasoning_tokens
    else:
        call.completion_tokens, call.usage_estimated = estimate, True
    if response is not None and response.get("service_tier") is not None:
        call.service_tier = tier_name(response["service_tier"])
    charge(call, target)


def price_answer(call: Call, target: Target, data: dict[str, Any]) -> None:
    """Price a whole (non-streamed) answer: its usage, or its text's estimate when the usage is missing or wrong."""
    usage = data.get("usage")
    if not believable(usage):
        call.completion_tokens = estimate_completion(data)
    if data.get("service_tier") is not None:
        call.service_tier = tier_name(data["service_tier"])
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
