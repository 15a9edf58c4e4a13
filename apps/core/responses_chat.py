"""The Responses API over an upstream that speaks only Chat Completions: translated both ways.

A provider marked Chat-only (``ProviderTarget.responses_api`` off, e.g. a vLLM or
other OpenAI-compatible server without ``/v1/responses``) is asked in Chat's shape
(``responses_to_chat``), and its completion comes back as a Response object
(``completion_to_response``); streams are translated in
``apps.core.responses_chat_stream``. The gateway keeps the conversation
(``previous_response_id``): ``history`` is the items of the earlier turns, prepended.

Request, Responses -> Chat:

- ``instructions`` -> a leading ``system`` message; ``input`` as a string -> one ``user`` message;
- message items keep their role (``developer`` and ``system`` included); text parts
  (``input_text``, ``output_text``) -> text, ``input_image`` -> an ``image_url`` part; an
  assistant's content is sent as one string;
- ``function_call`` items -> ``tool_calls`` of one assistant message (consecutive calls join the
  same message); ``function_call_output`` -> a ``tool`` message with its ``call_id``;
- ``reasoning`` items are dropped (Chat has no way to send them back);
- function ``tools`` -> Chat's ``{"type": "function", "function": {...}}``; any other tool type
  (web search, file search, MCP…) is refused with a 400, as is ``background``;
- ``tool_choice`` ``{"type": "function", "name": N}`` -> ``{"type": "function", "function": {"name": N}}``;
- ``text.format`` ``json_schema`` -> ``response_format`` ``json_schema`` (``json_object`` as is,
  ``text`` dropped); ``reasoning.effort`` -> ``reasoning_effort``;
  ``max_output_tokens`` -> ``max_completion_tokens``;
- ``temperature``, ``top_p``, ``user``, ``service_tier``, ``parallel_tool_calls`` pass as they are;
  ``stream`` comes with ``stream_options.include_usage`` (usage is how we bill);
  ``store``, ``metadata``, ``include``, ``truncation`` are ours or have no Chat meaning: not sent.

Answer, Chat -> Responses: the message's text -> one ``message`` output item with an
``output_text`` part, each tool call -> a ``function_call`` item; ``finish_reason``
``length`` -> status ``incomplete`` (``max_output_tokens``); usage ->
``input_tokens``/``output_tokens`` with their cached and reasoning details.

Plain Python: no Django, no I/O.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from apps.core.errors import bad_request
from apps.core.responses import is_response_id

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# The Response's fields that echo the request (what OpenAI returns beside the output).
_ECHOED = ("instructions", "max_output_tokens", "previous_response_id", "reasoning", "service_tier", "text",
           "temperature", "top_p", "user")  # fmt: skip
_PASSED = ("temperature", "top_p", "user", "service_tier", "parallel_tool_calls")


def responses_to_chat(payload: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A validated Responses request as a Chat Completions request; ``history`` is the conversation so far."""
    if payload.get("background") is True:
        raise bad_request("background=true is not available on a provider that speaks only Chat Completions.",
                          param="background", code="unsupported_parameter")  # fmt: skip
    messages: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for item in [*(history or ()), *input_items(payload.get("input"))]:
        _add_item(messages, item)
    chat: dict[str, Any] = {"model": payload.get("model"), "messages": messages}
    for name in _PASSED:
        if payload.get(name) is not None:
            chat[name] = payload[name]
    if payload.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = payload["max_output_tokens"]
    tools = payload.get("tools")
    if tools:
        chat["tools"] = [_chat_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if payload.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(payload["tool_choice"])
    reasoning = payload.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    text = payload.get("text")
    response_format = _response_format(text.get("format")) if isinstance(text, dict) else None
    if response_format is not None:
        chat["response_format"] = response_format
    if payload.get("stream") is True:
        chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    return chat


def input_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as a list of items: a string is one user message (Responses' own reading of it)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        content = item.get("content")
        if role == "assistant":
            messages.append({"role": "assistant", "content": _text(content)})
        else:
            messages.append({"role": role, "content": _chat_content(content)})
    elif kind == "function_call":
        function = {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}
        call = {"id": item.get("call_id"), "type": "function", "function": function}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or not last["content"]):
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text(output) if isinstance(output, list) else ""
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    # reasoning items and the like: Chat has no way to send them back


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str)
    )


def _chat_content(content: Any) -> Any:
    """A user/system message's content in Chat's shape: a string, or text and image parts."""
    if isinstance(content, str) or not isinstance(content, list):
        return content if isinstance(content, str) else ""
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise bad_request(f"Content parts of type '{kind}' are not available on a provider that speaks only "
                              "Chat Completions.", param="input", code="unsupported_parameter")  # fmt: skip
    return parts


def _chat_tool(tool: dict[str, Any], at: str) -> dict[str, Any]:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise bad_request(f"Only function tools are available on a provider that speaks only Chat Completions; "
                          f"'{at}' is not one.", param=at, code="unsupported_parameter")  # fmt: skip
    function = {"name": tool["name"]}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("Invalid 'tool_choice': expected 'none', 'auto', 'required' or a function.",
                      param="tool_choice", code="invalid_value")  # fmt: skip


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("name"), str):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request("Invalid 'text.format': expected a text, json_object or named json_schema format.",
                      param="text.format", code="invalid_value")  # fmt: skip


# --- the state the gateway keeps: events of the held-responses stream (names.held_responses_stream) ---

HELD_STORE = "store"
HELD_DELETE = "delete"


# How long a stored response is kept (OpenAI keeps one 30 days): its owner and any held state live as long.
STORED_TTL_SECONDS = 30 * 24 * 3600


def held_store_event(*, response: dict[str, Any], input_items: list[dict[str, Any]], project_id: int,
                     provider_id: int, model: str, created_at: float) -> dict[str, Any]:  # fmt: skip
    """A response we hold, as its durable copy's event (``apps.ledger.held_responses`` stores it)."""
    return {"type": HELD_STORE, "response_id": response.get("id"), "project_id": project_id,
            "provider_id": provider_id, "model": model, "created_at": created_at, "response": response,
            "input": input_items}  # fmt: skip


def held_state(*, response: dict[str, Any], context: list[Any], input_items: list[Any]) -> dict[str, Any]:
    """A held conversation's serving state (``names.response_state``): the Response object, the items of the
    turns before it (each earlier turn's input, then its output) and its own input items."""
    return {"response": response, "context": context, "input": input_items}


def owner_record(*, project_id: int, provider_id: int, model: str, tokens: int, translated: bool) -> bytes:
    """A stored response's owner (``names.response_owner``), as the gateway writes it and the restore of held
    conversations (``apps.ledger.held_restore``) rewrites it."""
    return orjson.dumps(
        {"project": project_id, "provider": provider_id, "model": model, "tokens": tokens, "translated": translated}
    )


def held_delete_event(*, response_id: str, project_id: int) -> dict[str, Any]:
    return {"type": HELD_DELETE, "response_id": response_id, "project_id": project_id}


# --- the answer ----------------------------------------------------------------------------------


def response_shell(response_id: str, payload: dict[str, Any], model: str) -> dict[str, Any]:
    """A Response object with what echoes the request; status, output and usage still to fill in."""
    shell: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": payload.get("parallel_tool_calls") is not False,
        "tool_choice": payload.get("tool_choice") or "auto",
        "tools": payload.get("tools") or [],
        "store": payload.get("store") is not False,
        "background": False,
        "metadata": payload.get("metadata") or {},
        "usage": None,
    }
    for name in _ECHOED:
        shell[name] = payload.get(name)
    shell["text"] = shell["text"] or {"format": {"type": "text"}}
    return shell


def usage_to_responses(usage: Any) -> dict[str, Any] | None:
    """Chat usage as Responses usage (cached and reasoning details kept); None when it is not an object."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt_details, completion_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    reasoning = completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
    total = prompt + completion if type(prompt) is int and type(completion) is int else usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": total,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}  # fmt: skip


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}  # fmt: skip


def finish(response: dict[str, Any], finish_reason: Any) -> None:
    """Set a translated response's status from the chat answer's ``finish_reason``."""
    if finish_reason == "length":
        response["status"], response["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"], response["incomplete_details"] = "incomplete", {"reason": "content_filter"}
    else:
        response["status"] = "completed"


def first_choice(chat: dict[str, Any]) -> dict[str, Any] | None:
    """The first choice of a chat completion or chunk, when it has one that is an object."""
    choices = chat.get("choices")
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None


def completion_to_response(completion: dict[str, Any], *, response_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (first choice) as the Response object a Responses client reads."""
    response = response_shell(response_id, payload, str(completion.get("model") or payload.get("model") or ""))
    choice = first_choice(completion) or {}
    message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    suffix = response_id.removeprefix("resp_")
    text = message.get("content")
    if isinstance(text, str) and text:
        response["output"].append(message_item(f"msg_{suffix}", text))
    tool_calls = message.get("tool_calls")
    for index, call in enumerate(tool_calls if isinstance(tool_calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{suffix}_{index}"
        response["output"].append(function_call_item(f"fc_{suffix}_{index}", call_id, str(function.get("name") or ""),
                                                     str(function.get("arguments") or "")))  # fmt: skip
    finish(response, choice.get("finish_reason"))
    response["usage"] = usage_to_responses(completion.get("usage"))
    if isinstance(completion.get("service_tier"), str):
        response["service_tier"] = completion["service_tier"]
    return response


def stored_items(items: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """Input items as ``input_items`` lists them: each with an id (``msg_…`` given by us when it has none)."""
    suffix = response_id.removeprefix("resp_")
    named = []
    for index, item in enumerate(items):
        item_id = item.get("id")
        if not is_response_id(item_id):
            item_id = f"{'msg' if item.get('type', 'message') == 'message' else 'item'}_{suffix}_{index}"
        item = {"type": "message", **item, "id": item_id}
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        named.append(item)
    return named
