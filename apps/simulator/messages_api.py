"""Anthropic's Messages API on the simulated upstream: ``POST /v1/messages``, plain and streamed.

Written from Anthropic's published API, sharing nothing with the gateway's translation:

- the key comes as ``x-api-key`` (or Bearer); ``max_tokens`` is required;
- the answer is the same deterministic text the chat endpoint gives for the same
  text, cut at ``max_tokens`` (``stop_reason: max_tokens``) or at the first of
  ``stop_sequences`` it contains (``stop_sequence``);
- with ``tools`` (and ``tool_choice`` other than ``none``), a turn that does not end with
  a ``tool_result`` is answered by a ``tool_use`` block calling the named tool (or the
  first), with a value for each required property; a turn that ends with one gets text;
- prompt caching: the text up to the last block marked ``cache_control`` (tools, then
  system, then messages) is the cached prefix. The first request with a prefix reports
  its tokens as ``cache_creation_input_tokens``, later ones as ``cache_read_input_tokens``,
  and ``input_tokens`` counts the rest (Anthropic's minimum cacheable length is not applied);
- ``[[sim:429]]`` answers ``rate_limit_error`` (with ``retry-after``), ``[[sim:529]]``
  ``overloaded_error``, ``[[sim:500]]`` ``api_error``; ``[[sim:latency=MS]]``,
  ``[[sim:answer=…]]`` and ``[[sim:fail_after=N]]`` work as on the chat endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from apps.simulator.directives import parse_directives
from apps.simulator.generation import CHAT, MODELS, STREAM_TOKENS_PER_CHUNK, count_tokens, prompt_digest
from apps.simulator.options import choice_tokens
from apps.simulator.replies import JSON_HEADERS, STREAM_HEADERS, Rejected, Reply, stream_reply

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}  # fmt: skip


def anthropic_error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return Reply(status, body, JSON_HEADERS + (headers or []))


def _invalid(message: str) -> Rejected:
    return Rejected(anthropic_error(400, message))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class MessagesApi:
    """The handler; remembers the prompt-cache prefixes it has seen (for cache reads)."""

    def __init__(self, new_id: Callable[[str], str]) -> None:
        self._new_id = new_id
        self._cached: set[bytes] = set()

    def create(self, body: dict[str, Any]) -> Reply:
        try:
            return self._create(body)
        except Rejected as rejected:
            return rejected.reply

    def _create(self, body: dict[str, Any]) -> Reply:
        model = body.get("model")
        if not isinstance(model, str):
            raise _invalid("model: Field required")
        if MODELS.get(model, ("",))[0] != CHAT:
            return anthropic_error(404, f"model: {model}")
        limit = body.get("max_tokens")
        if type(limit) is not int or limit < 1:
            raise _invalid("max_tokens: Field required (an integer of at least 1)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages: at least one message is required")
        texts, prefix = _texts(body)
        text = "\n".join(texts)
        directives = parse_directives(text, model)
        if directives is not None and directives.status is not None:
            retry = [(b"retry-after", b"1")] if directives.status == 429 else None
            reply = anthropic_error(directives.status, "Simulated error.", retry)
            reply.delay_s = directives.delay_s
            return reply
        total = count_tokens(text) + 4 * len(messages)
        cached = count_tokens("\n".join(texts[:prefix])) if prefix else 0
        usage = {"input_tokens": total - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if cached:
            key = prompt_digest(model, texts[:prefix])
            usage["cache_read_input_tokens" if key in self._cached else "cache_creation_input_tokens"] = cached
            self._cached.add(key)
        tool = _tool_to_call(body, messages)
        if tool is not None:
            content: list[dict[str, Any]] = [{"type": "tool_use", "id": self._new_id("toolu"), "name": tool[0],
                                              "input": tool[1]}]  # fmt: skip
            output, stop_reason, stop_sequence = 12, "tool_use", None
        else:
            tokens, finish = choice_tokens(prompt_digest(model, messages), 0, directives, limit)
            answer = "".join(tokens)
            stop_reason, stop_sequence = ("max_tokens" if finish == "length" else "end_turn"), None
            for stop in body.get("stop_sequences") or ():
                if isinstance(stop, str) and stop and stop in answer:
                    answer, stop_reason, stop_sequence = answer[: answer.index(stop)], "stop_sequence", stop
                    break
            content = [{"type": "text", "text": answer}]
            output = count_tokens(answer)
        usage["output_tokens"] = output
        message = {"id": self._new_id("msg"), "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                   "usage": usage}  # fmt: skip
        delay_s = directives.delay_s if directives is not None else 0.0
        if body.get("stream") is True:
            fail_after = directives.fail_after if directives is not None else None
            return _stream(message, fail_after, delay_s)
        return Reply(200, orjson.dumps(message), delay_s=delay_s)


def _texts(body: dict[str, Any]) -> tuple[list[str], int]:
    """The request's texts in cache order (tools, system, messages), and how many of them the cached prefix holds."""
    texts: list[str] = []
    prefix = 0

    def add(text: str, block: Any) -> None:
        nonlocal prefix
        texts.append(text)
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            prefix = len(texts)

    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            add(orjson.dumps(tool).decode(), tool)
    system = body.get("system")
    for block in [{"text": system}] if isinstance(system, str) else system or ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            add(block["text"], block)
    for message in body["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        for block in [{"text": content}] if isinstance(content, str) else content or ():
            if not isinstance(block, dict):
                raise _invalid("messages: each content block must be an object")
            inner = block.get("content")
            if isinstance(block.get("text"), str):
                add(block["text"], block)
            elif isinstance(inner, str):
                add(inner, block)
            elif block.get("type") == "tool_use":
                add(orjson.dumps(block.get("input")).decode(), block)
            elif isinstance(inner, list):
                add(" ".join(str(b.get("text", "")) for b in inner if isinstance(b, dict)), block)
    return texts, prefix


def _tool_to_call(body: dict[str, Any], messages: list[Any]) -> tuple[str, dict[str, Any]] | None:
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = _obj(body.get("tool_choice"))
    if not tools or choice.get("type") == "none":
        return None
    content = _obj(messages[-1]).get("content")
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    schema = _obj(tool.get("input_schema"))
    properties = _obj(schema.get("properties"))
    values = {"string": "simulated", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    arguments = {
        name: values.get(str(_obj(properties.get(name)).get("type")))
        for name in schema.get("required") or ()
        if isinstance(name, str)
    }
    return tool["name"], arguments


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _stream(message: dict[str, Any], fail_after: int | None, delay_s: float) -> Reply:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}  # fmt: skip
    chunks = [_event("message_start", {"message": start})]
    fail_at: int | None = None
    pieces = 0
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            chunks.append(
                _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            )
            chunks.append(_event("ping", {}))
            words = block["text"].split(" ")
            for at in range(0, len(words), STREAM_TOKENS_PER_CHUNK):
                if pieces == fail_after:
                    fail_at = len(chunks)
                pieces += 1
                piece = " ".join(words[at : at + STREAM_TOKENS_PER_CHUNK])
                piece = piece if at == 0 else " " + piece
                delta = {"type": "text_delta", "text": piece}
                chunks.append(_event("content_block_delta", {"index": index, "delta": delta}))
        else:
            opened = {**block, "input": {}}
            chunks.append(_event("content_block_start", {"index": index, "content_block": opened}))
            arguments = orjson.dumps(block["input"]).decode()
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                delta = {"type": "input_json_delta", "partial_json": part}
                chunks.append(_event("content_block_delta", {"index": index, "delta": delta}))
        chunks.append(_event("content_block_stop", {"index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    chunks.append(_event("message_delta", {"delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}))
    chunks.append(_event("message_stop", {}))
    reply = stream_reply(chunks, fail_at, delay_s)
    reply.headers = STREAM_HEADERS
    return reply
