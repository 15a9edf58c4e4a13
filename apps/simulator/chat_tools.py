"""Function calling on the simulated chat endpoint, as on the Responses one.

A request with function ``tools`` whose last message is not a ``tool`` result calls
the first function (unless ``tool_choice`` is ``none``), with each required argument
set to ``"Paris"``; ``finish_reason`` is ``tool_calls``. A request with directives
(``[[sim:…]]``) gets the text answer they shape instead. As OpenAI does, a ``tool``
message must answer a tool call of an earlier assistant message (its
``tool_call_id``), else the request is a 400: a translator that loses the pairing
fails here as it would upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from apps.simulator.generation import chat_usage, count_tokens
from apps.simulator.replies import DONE, Reply, invalid, sse, stream_reply


def check_tool_messages(messages: list[Any]) -> None:
    called: set[Any] = set()
    for position, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                called.add(call.get("id"))
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            raise invalid(
                "Invalid parameter: messages with role 'tool' must be a response to a preceding message with "
                "'tool_calls'.",
                f"messages[{position}].role",
                "invalid_value",
            )


def tool_call(body: dict[str, Any], messages: list[Any], new_id: Callable[[str], str]) -> dict[str, Any] | None:
    """The tool call this request is answered with, or None when it gets a text answer."""
    tools = body.get("tools")
    if not isinstance(tools, list) or body.get("tool_choice") == "none" or messages[-1].get("role") == "tool":
        return None
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            required = parameters.get("required") if isinstance(parameters, dict) else None
            names = [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
            arguments = orjson.dumps(dict.fromkeys(names, "Paris")).decode()
            return {"id": new_id("call"), "type": "function", "function": {"name": function["name"],
                                                                            "arguments": arguments}}  # fmt: skip
    return None


def tool_call_reply(
    base: dict[str, Any], call: dict[str, Any], prompt_tokens: int, *, stream: bool, include_usage: bool
) -> Reply:
    """The answer that makes ``call``: a completion, or its chunks (the arguments in two pieces)."""
    usage = chat_usage(prompt_tokens, count_tokens(call["function"]["arguments"]) + 4)
    if not stream:
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return Reply(200, orjson.dumps({**base, "object": "chat.completion", "choices": [choice], "usage": usage}))
    chunk = {**base, "object": "chat.completion.chunk"}
    arguments = call["function"]["arguments"]
    half = len(arguments) // 2
    opening = {"index": 0, "id": call["id"], "type": "function",
               "function": {"name": call["function"]["name"], "arguments": arguments[:half]}}  # fmt: skip
    deltas = [
        {"role": "assistant", "content": None, "tool_calls": [opening]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
    ]
    chunks = [sse({**chunk, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]})
              for d in deltas]  # fmt: skip
    chunks.append(
        sse({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]})
    )
    if include_usage:
        chunks.append(sse({**chunk, "choices": [], "usage": usage}))
    return stream_reply([*chunks, DONE], None, 0.0)
