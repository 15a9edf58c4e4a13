"""The Responses API (``/v1/responses``) as our contract reads it: what a request may say, what its prompt
is worth in tokens, and what its answer's usage means.

- ``validate_responses(payload)`` checks what we must understand to route, bill and keep state safely
  (``input`` items, ``instructions``, ``max_output_tokens``, ``tools``, ``previous_response_id``,
  ``store``, ``background``, ``reasoning``, ``text``, ``service_tier``); everything else is the
  provider's to validate.
- ``input_estimate(payload)`` is an upper bound on the prompt tokens the request itself carries (a
  ``previous_response_id`` conversation adds what earlier turns used, which the gateway remembers).
- ``usage_counts(usage)`` reads a Responses ``usage`` object (``input_tokens``, ``output_tokens`` and
  their details) as the ledger's counts, or None when it is not one we can believe.

Plain Python: the gateway, the batch runner and the tests import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apps.core.errors import bad_request
from apps.core.text import json_tokens, text_tokens

# OpenAI's ids are short ASCII (resp_ + hex); anything else is no id of ours or theirs.
RESPONSE_ID_MAX = 200
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_OUTPUT_BOUND = 1_000_000
_SERVICE_TIERS = frozenset({"auto", "default", "flex", "priority", "scale"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
IMAGE_TOKENS = 4_096  # as for chat: the most an image costs on any model we know
FILE_TOKENS = 32_768
PER_ITEM_OVERHEAD = 3
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def is_response_id(value: Any) -> bool:
    """Whether ``value`` can be a response id (short, letters, digits, ``_`` and ``-``)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= RESPONSE_ID_MAX
        and value.isascii()
        and value.replace("_", "").replace("-", "").isalnum()
    )


def validate_responses(payload: dict[str, Any]) -> None:
    """Raise a 400 ``GatewayError`` for a Responses body we cannot route, bill or keep state for."""
    value = payload.get("input")
    if value is None:
        raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _item(item, f"input[{index}]")
    elif not isinstance(value, str):
        raise bad_request("Invalid type for 'input': expected a string or an array of input items.", param="input",
                          code="invalid_type")  # fmt: skip
    for name in ("instructions", "previous_response_id", "service_tier"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise bad_request(f"Invalid type for '{name}': expected a string.", param=name, code="invalid_type")
    for name in ("store", "background", "parallel_tool_calls"):
        if payload.get(name) is not None and not isinstance(payload[name], bool):
            raise bad_request(f"Invalid type for '{name}': expected a boolean.", param=name, code="invalid_type")
    for name in ("reasoning", "text", "metadata"):
        if payload.get(name) is not None and not isinstance(payload[name], dict):
            raise bad_request(f"Invalid type for '{name}': expected an object.", param=name, code="invalid_type")
    previous = payload.get("previous_response_id")
    if previous is not None and not is_response_id(previous):
        raise bad_request("Invalid 'previous_response_id': not a response id.", param="previous_response_id",
                          code="invalid_value")  # fmt: skip
    tier = payload.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise bad_request(f"Invalid value for 'service_tier': expected one of {', '.join(sorted(_SERVICE_TIERS))}.",
                          param="service_tier", code="invalid_value")  # fmt: skip
    limit = payload.get("max_output_tokens")
    if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_OUTPUT_BOUND):
        raise bad_request(f"Invalid 'max_output_tokens': expected an integer from 1 to {MAX_OUTPUT_BOUND}.",
                          param="max_output_tokens", code="invalid_value")  # fmt: skip
    include = payload.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(i, str) for i in include)):
        raise bad_request("Invalid type for 'include': expected an array of strings.", param="include",
                          code="invalid_type")  # fmt: skip
    top = payload.get("top_logprobs")
    if top is not None and (type(top) is not int or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise bad_request(f"Invalid 'top_logprobs': expected an integer from 0 to {MAX_TOP_LOGPROBS}.",
                          param="top_logprobs", code="invalid_value")  # fmt: skip
    tools = payload.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise bad_request("Invalid type for 'tools': expected an array of objects.", param="tools", code="invalid_type")
    if payload.get("background") is True and payload.get("store") is False:
        raise bad_request("A background response must be stored: background=true needs store=true.",
                          param="background", code="invalid_value")  # fmt: skip


def _item(item: Any, at: str) -> None:
    if not isinstance(item, dict):
        raise bad_request(f"Invalid type for '{at}': expected an object.", param=at, code="invalid_type")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise bad_request(f"Invalid type for '{at}.type': expected a string.", param=f"{at}.type", code="invalid_type")
    if kind == "message":
        if not isinstance(item.get("role"), str):
            raise bad_request(f"Invalid '{at}': a message needs a string 'role'.", param=f"{at}.role",
                              code="invalid_type")  # fmt: skip
        content = item.get("content")
        if isinstance(content, list):
            for position, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise bad_request(f"Invalid '{at}.content[{position}]': expected an object with a string 'type'.",
                                      param=f"{at}.content[{position}]", code="invalid_type")  # fmt: skip
        elif not isinstance(content, str):
            raise bad_request(f"Invalid type for '{at}.content': expected a string or an array of content parts.",
                              param=f"{at}.content", code="invalid_type")  # fmt: skip
    elif kind in ("function_call_output", "function_call") and not isinstance(item.get("call_id"), str):
        raise bad_request(f"Missing required parameter: '{at}.call_id'.", param=f"{at}.call_id",
                          code="missing_required_parameter")  # fmt: skip


def input_estimate(payload: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens of a validated request's own input, instructions and tools."""
    total = PER_ITEM_OVERHEAD
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        total += text_tokens(instructions)
    value = payload.get("input")
    if isinstance(value, str):
        total += PER_ITEM_OVERHEAD + text_tokens(value)
    elif isinstance(value, list):
        total += sum(_item_tokens(item) for item in value if isinstance(item, dict))
    for name in ("tools", "tool_choice", "text"):
        if payload.get(name):
            total += json_tokens(payload[name])
    return total


def _item_tokens(item: dict[str, Any]) -> int:
    total = PER_ITEM_OVERHEAD
    content = item.get("content")
    if isinstance(content, str):
        return total + text_tokens(content)
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            text = part.get("text") if isinstance(part, dict) else None
            if kind in _TEXT_PARTS and isinstance(text, str):
                total += text_tokens(text)
            elif kind == "input_image":
                total += IMAGE_TOKENS
            elif kind == "input_file":
                data = part.get("file_data")
                total += max(FILE_TOKENS, text_tokens(data) if isinstance(data, str) else 0)
            else:
                total += json_tokens(part)
        return total
    # Function calls, their outputs, reasoning items and the like: their JSON is an upper bound.
    return total + json_tokens(item)


@dataclass(frozen=True, slots=True)
class UsageCounts:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value else None


def usage_counts(usage: Any) -> UsageCounts | None:
    """A Responses ``usage`` as counts, or None when it is not an object of non-negative integer counts.

    Cached tokens are part of the input and reasoning tokens part of the output, as OpenAI reports
    them; details that are missing or wrong count as 0, and never more than their total.
    """
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    input_details, output_details = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    cached = _count(input_details.get("cached_tokens")) if isinstance(input_details, dict) else None
    reasoning = _count(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else None
    return UsageCounts(prompt, min(cached or 0, prompt), completion, min(reasoning or 0, completion))


def output_text(response: dict[str, Any]) -> str:
    """The text of a response's output messages (what ``response.output_text`` is in the SDK)."""
    parts: list[str] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), list):
            parts.extend(
                part["text"]
                for part in item["content"]
                if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str)
            )
    return "".join(parts)
