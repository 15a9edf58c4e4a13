"""Anthropic's Messages API and OpenAI's Chat Completions, translated both ways.

The gateway's pipeline speaks Chat Completions. A request that comes in on
``/v1/messages`` is translated to a chat request (``messages_to_chat``) and its
answer back (``completion_to_message``); a chat request served by an
Anthropic-kind provider goes out as a Messages request (``chat_to_messages``) and
its answer comes back as a chat completion (``message_to_completion``). Streams
are translated event by event in ``apps.core.anthropic_stream``.

What does not survive a round trip chat -> Messages -> chat (the property test in
``tests/core/test_anthropic_roundtrip.py`` checks everything else):

- ``developer`` messages become ``system``; several system messages become one
  system prompt of text parts, system messages after the first turn move to it, and
  empty system texts are dropped (Anthropic refuses empty text blocks);
- ``max_completion_tokens`` becomes ``max_tokens``; a missing one gets the default
  the gateway passes (the model's largest output, the figure the budget reserves);
- ``stop`` as a string becomes a one-element list;
- ``temperature`` above 1 is sent as 1 (Anthropic's range is 0 to 1);
- a tool without ``parameters`` gets an empty object schema;
- parameters Anthropic has no equivalent for are dropped: ``n`` above 1 is refused,
  ``logprobs``, ``response_format``, ``seed``, penalties, ``logit_bias`` are not sent;
- an assistant turn with neither text nor tool calls is sent as an empty string; its text beside
  tool calls comes back as one text part (empty text there is dropped);
- ``stream: true`` comes back with ``stream_options.include_usage`` on; ``parallel_tool_calls: true``
  (the default) is not sent; an image's ``detail`` and a message's ``name`` are not sent.

Messages -> chat: ``top_k``, ``thinking`` blocks and ``is_error`` on tool results have no
chat equivalent and are dropped; tool results carry text only.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from apps.core.errors import bad_request

ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header we send upstream
# Provider kinds that speak the Messages API (values of apps.providers.models.ProviderKind).
ANTHROPIC_KINDS = frozenset({"anthropic", "simulated_anthropic"})

ENDPOINT_MESSAGES = "messages"
ENDPOINT_COUNT_TOKENS = "messages.count_tokens"
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}

STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


# --- errors ---------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def error_to_anthropic(status: int, body: bytes) -> bytes:
    """An OpenAI-shaped error (ours or a provider's) in Anthropic's shape."""
    message = f"The request failed with status {status}."
    try:
        error = orjson.loads(body).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, dict) and isinstance(error.get("error"), dict):
            message = str(error["error"].get("message") or message)
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return anthropic_error_body(status, message)


def error_to_openai(status: int, body: bytes) -> bytes:
    """An Anthropic provider's error in OpenAI's shape; its type doubles as the code (``overloaded_error``)."""
    kind, message = error_type(status), f"The provider answered {status}."
    try:
        error = orjson.loads(body).get("error")
        if isinstance(error, dict):
            kind = str(error.get("type") or kind)[:100]
            message = str(error.get("message") or message)
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": kind}})


# --- requests: Messages -> chat -------------------------------------------------------------------


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages API request as a chat request; a 400 ``GatewayError`` for one we cannot read."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("model: Field required (a non-empty string).", param="model")
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int:
        raise bad_request("max_tokens: Field required (an integer).", param="max_tokens")
    chat: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": _system_to_chat(body.get("system"))}
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: a non-empty array of messages is required.", param="messages")
    for index, message in enumerate(messages):
        chat["messages"].extend(_turn_to_chat(message, index))
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop_sequences: expected an array of strings.", param="stop_sequences")
        chat["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request("tools: expected an array of tools.", param="tools")
        chat["tools"] = [_tool_to_chat(tool, index) for index, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        _tool_choice_to_chat(choice, chat)
    return chat


def _system_to_chat(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        return [{"role": "system", "content": [_text_block(block, "system") for block in system]}]
    raise bad_request("system: expected a string or an array of text blocks.", param="system")


def _text_block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise bad_request(f"{where}: expected a text block ({{'type': 'text', 'text': ...}}).", param=where)
    part: dict[str, Any] = {"type": "text", "text": block["text"]}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _turn_to_chat(message: Any, index: int) -> list[dict[str, Any]]:
    where = f"messages.{index}"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise bad_request(f"{where}: expected an object with role 'user' or 'assistant'.", param=where)
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: expected a string or an array of content blocks.", param=where)
    for position, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f"{where}.content.{position}: expected an object with a string 'type'.", param=where)
    if role == "assistant":
        return [_assistant_to_chat(content, where)]
    turns: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(content):
        at = f"{where}.content.{position}"
        kind = block["type"]
        if kind == "tool_result":
            turns.append(_tool_result_to_chat(block, at))
        elif kind == "text":
            parts.append(_text_block(block, at))
        elif kind == "image":
            parts.append(_image_to_chat(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(f"{at}: content blocks of type '{kind}' are not supported here.", param=at)
    if parts:
        turns.append({"role": "user", "content": parts})
    return turns


def _assistant_to_chat(content: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(content):
        at = f"{where}.content.{position}"
        if block["type"] == "text":
            texts.append(_text_block(block, at))
        elif block["type"] == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad_request(f"{at}: a tool_use block needs a string 'id' and 'name'.", param=at)
            arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
            calls.append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
            )
        elif block["type"] not in ("thinking", "redacted_thinking"):
            raise bad_request(f"{at}: content blocks of type '{block['type']}' are not supported here.", param=at)
    turn: dict[str, Any] = {"role": "assistant", "content": texts or None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _tool_result_to_chat(block: dict[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise bad_request(f"{at}: a tool_result block needs a string 'tool_use_id'.", param=at)
    content = block.get("content", "")
    if isinstance(content, list):
        content = [_text_block(part, at) for part in content]
    elif not isinstance(content, str):
        raise bad_request(f"{at}.content: expected a string or an array of text blocks.", param=at)
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _image_to_chat(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise bad_request(f"{at}.source: expected a base64 or url image source.", param=at)


def _tool_to_chat(tool: Any, index: int) -> dict[str, Any]:
    at = f"tools.{index}"
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise bad_request(f"{at}: a tool needs a string 'name'.", param=at)
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise bad_request(f"{at}.input_schema: expected a JSON schema object.", param=at)
    function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice_to_chat(choice: Any, chat: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad_request("tool_choice: expected type 'auto', 'any', 'none' or 'tool' (with a name).")
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


# --- requests: chat -> Messages -------------------------------------------------------------------


def chat_to_messages(payload: dict[str, Any], *, default_max_tokens: int) -> dict[str, Any]:
    """A (validated) chat request as a Messages API request; a 400 for what Anthropic cannot express."""
    n = payload.get("n")
    if n is not None and n != 1:
        raise bad_request("Anthropic models answer one choice per request: n must be 1.", param="n")
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens") or default_max_tokens
    body: dict[str, Any] = {"model": payload["model"], "max_tokens": max_tokens}
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(payload["messages"]):
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(b for b in _parts_to_blocks(message.get("content"), f"messages[{index}]") if b["text"])
        elif role == "user":
            turns.append({"role": "user", "content": _user_content(message.get("content"), index)})
        elif role == "assistant":
            turns.append({"role": "assistant", "content": _assistant_content(message, index)})
        elif role == "tool":
            result = _tool_result(message, index)
            previous = turns[-1] if turns else None
            if previous is not None and previous.get("tool_results"):
                previous["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result], "tool_results": True})
        else:
            raise bad_request(f"Messages of role '{role}' cannot be sent to an Anthropic model.",
                              param=f"messages[{index}].role")  # fmt: skip
    if not turns:
        raise bad_request("An Anthropic model needs at least one user or assistant message.", param="messages")
    if system:
        only = system[0]
        body["system"] = only["text"] if len(system) == 1 and set(only) == {"type", "text"} else system
    body["messages"] = [{"role": t["role"], "content": t["content"]} for t in turns]
    temperature = payload.get("temperature")
    if temperature is not None:
        body["temperature"] = min(temperature, 1)
    if payload.get("top_p") is not None:
        body["top_p"] = payload["top_p"]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("stream"):
        body["stream"] = True
    if isinstance(payload.get("user"), str) and payload["user"]:
        body["metadata"] = {"user_id": payload["user"]}
    tools = payload.get("tools")
    if tools:
        body["tools"] = [_tool_to_anthropic(tool, index) for index, tool in enumerate(tools)]
    choice = _tool_choice_to_anthropic(payload.get("tool_choice"))
    if payload.get("parallel_tool_calls") is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        body["tool_choice"] = choice
    return body


def _parts_to_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or ():
        if part.get("type") not in ("text", "input_text"):
            raise bad_request(f"Only text parts can be sent to an Anthropic model here ({where}).", param=where)
        block: dict[str, Any] = {"type": "text", "text": part["text"]}
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _user_content(content: Any, index: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        where = f"messages[{index}].content[{position}]"
        if part["type"] == "image_url":
            blocks.append(_image_block(part.get("image_url"), where))
        else:
            blocks.extend(_parts_to_blocks([part], where))
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise bad_request(f"Invalid '{where}': an image_url part needs a 'url'.", param=where)
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_content(message: dict[str, Any], index: int) -> str | list[dict[str, Any]]:
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if isinstance(content, str) and not calls:
        return content
    # Anthropic refuses empty text blocks; an empty text beside tool calls says nothing.
    blocks = [b for b in _parts_to_blocks(content, f"messages[{index}]") if b["text"]] if content is not None else []
    for position, call in enumerate(calls):
        where = f"messages[{index}].tool_calls[{position}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"Invalid '{where}': expected a function call with a name.", param=where)
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            raise bad_request(f"Invalid '{where}.function.arguments': expected a JSON object.", param=where) from None
        if not isinstance(arguments, dict):
            raise bad_request(f"Invalid '{where}.function.arguments': expected a JSON object.", param=where)
        blocks.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": function["name"],
                       "input": arguments})  # fmt: skip
    return blocks or ""


def _tool_result(message: dict[str, Any], index: int) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise bad_request(f"Invalid 'messages[{index}]': a tool message needs a 'tool_call_id'.",
                          param=f"messages[{index}].tool_call_id")  # fmt: skip
    content = message.get("content")
    result = content if isinstance(content, str) else _parts_to_blocks(content, f"messages[{index}]")
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


def _tool_to_anthropic(tool: dict[str, Any], index: int) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"Invalid 'tools[{index}]': only function tools can be sent to an Anthropic model.",
                          param=f"tools[{index}]")  # fmt: skip
    schema = function.get("parameters")
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
    }
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _tool_choice_to_anthropic(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise bad_request("Invalid 'tool_choice' for an Anthropic model.", param="tool_choice")


# --- answers --------------------------------------------------------------------------------------


def usage_to_chat(usage: Any) -> dict[str, Any] | None:
    """Anthropic's usage as chat usage: prompt tokens include cache reads and writes, as OpenAI counts them.

    ``prompt_tokens_details.cache_write_tokens`` is ours (OpenAI reports no cache writes): the ledger
    prices those tokens at the model's cache-write price. Anything not a count is passed on as it came
    (the price stage then estimates and marks the row).
    """
    if not isinstance(usage, dict):
        return None
    counts = [usage.get(name, 0) or 0 for name in ("input_tokens", "cache_creation_input_tokens",
                                                   "cache_read_input_tokens", "output_tokens")]  # fmt: skip
    if not all(type(c) is int and c >= 0 for c in counts):
        return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}
    fresh, written, read, output = counts
    prompt = fresh + written + read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
    }


def usage_to_anthropic(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    prompt, output = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    read, written = _count(details.get("cached_tokens")), _count(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(prompt - read - written, 0),
        "output_tokens": output,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }


def as_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (answers from upstreams are not trusted)."""
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def message_to_completion(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message (a provider's answer) as a chat completion."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
            calls.append({"id": str(block.get("id") or ""), "type": "function",
                          "function": {"name": str(block.get("name") or ""), "arguments": arguments}})  # fmt: skip
    chat_message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                                    "refusal": None}  # fmt: skip
    if calls:
        chat_message["tool_calls"] = calls
    completion: dict[str, Any] = {
        "id": str(message.get("id") or ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(message.get("model") or ""),
        "choices": [
            {
                "index": 0,
                "message": chat_message,
                "logprobs": None,
                "finish_reason": STOP_TO_FINISH.get(str(message.get("stop_reason")), "stop"),
            }
        ],  # fmt: skip
    }
    usage = usage_to_chat(message.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def completion_to_message(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (from any provider, or the cache) as an Anthropic message."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = as_object(choice.get("message"))
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            arguments = {}
        content.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                        "input": arguments if isinstance(arguments, dict) else {}})  # fmt: skip
    return {
        "id": str(completion.get("id") or ""),
        "type": "message",
        "role": "assistant",
        "model": str(completion.get("model") or ""),
        "content": content,
        "stop_reason": FINISH_TO_STOP.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": usage_to_anthropic(completion.get("usage")),
    }


def without_cache_control(payload: dict[str, Any]) -> dict[str, Any]:
    """A chat request without the ``cache_control`` marks a Messages request brought (for non-Anthropic providers)."""
    messages = []
    for message in payload.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and "cache_control" in p for p in content):
            content = [{k: v for k, v in p.items() if k != "cache_control"} if isinstance(p, dict) else p
                       for p in content]  # fmt: skip
            message = {**message, "content": content}
        messages.append(message)
    return {**payload, "messages": messages}
