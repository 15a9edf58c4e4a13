"""Streams translated event by event: Anthropic's Messages events <-> chat completion chunks.

Both translators are pure (bytes in, bytes out) and keep only what a stream needs
to carry over between events: which content block is open, the usage seen so
far, the finish reason. A partial event waits for its end, up to
``max_event_bytes``; past that the bytes are passed on unframed, so the relay's
own bound cuts the stream off as it would any provider's.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from apps.core.anthropic import (
    FINISH_TO_STOP,
    STOP_TO_FINISH,
    as_object,
    error_to_anthropic,
    error_to_openai,
    usage_to_anthropic,
    usage_to_chat,
)

DONE = b"data: [DONE]\n\n"


def split_events(buffer: bytes, max_event_bytes: int) -> tuple[list[bytes], bytes, bytes]:
    """(complete events, what is left to wait for, bytes to pass on unframed)."""
    cut = buffer.rfind(b"\n\n")
    if cut < 0:
        return ([], b"", buffer) if len(buffer) > max_event_bytes else ([], buffer, b"")
    return [e for e in buffer[:cut].split(b"\n\n") if e.strip()], buffer[cut + 2 :], b""


def parse_event(event: bytes) -> tuple[str, Any]:
    """An event's name and its data as JSON (None when it is not JSON)."""
    name, data = "", b""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            data += line[5:].strip()
    if data == b"[DONE]":
        return "done", None
    try:
        return name, orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return name, None


class MessagesToChat:
    """An Anthropic provider's stream, as the chat chunks an OpenAI client (and our relay) reads."""

    def __init__(self, *, model: str, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        self._buffer = b""
        self._base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time()),
                                      "model": model}  # fmt: skip
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> bytes:
        events, self._buffer, unframed = split_events(self._buffer + chunk, self._max)
        out = [self._event(*parse_event(event)) for event in events]
        return b"".join(out) + unframed

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**self._base, "choices": [choice]}) + b"\n\n"

    def _event(self, name: str, data: Any) -> bytes:
        if not isinstance(data, dict):
            return b""
        kind = data.get("type", name)
        if kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            self._base["id"] = str(message.get("id") or "")
            self._base["model"] = str(message.get("model") or self._base["model"])
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            block = data["content_block"]
            if block.get("type") == "tool_use":
                position = self._tools.setdefault(data.get("index", 0), len(self._tools))
                call = {"index": position, "id": str(block.get("id") or ""), "type": "function",
                        "function": {"name": str(block.get("name") or ""), "arguments": ""}}  # fmt: skip
                return self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": str(block["text"])})
            return b""
        if kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            delta = data["delta"]
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return self._chunk({"content": delta["text"]})
            if delta.get("type") == "input_json_delta" and data.get("index", 0) in self._tools:
                call = {"index": self._tools[data.get("index", 0)],
                        "function": {"arguments": str(delta.get("partial_json") or "")}}  # fmt: skip
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "message_delta":
            if isinstance(data.get("usage"), dict):
                self._usage.update({k: v for k, v in data["usage"].items() if v is not None})
            stop = (data.get("delta") or {}).get("stop_reason") if isinstance(data.get("delta"), dict) else None
            return self._chunk({}, STOP_TO_FINISH.get(str(stop), "stop"))
        if kind == "message_stop":
            usage = usage_to_chat(self._usage)
            final = b"data: " + orjson.dumps({**self._base, "choices": [], "usage": usage}) + b"\n\n" if usage else b""
            return final + DONE
        if kind == "error":
            return b"data: " + error_to_openai(500, orjson.dumps(data)) + b"\n\n"
        return b""  # ping, and event types added after this was written


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class ChatToMessages:
    """Chat chunks (from any provider, or the cache) as the events an Anthropic client reads."""

    def __init__(self, *, model: str, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        self._buffer = b""
        self._model = model
        self._started = False
        self._block = -1  # index of the open content block, -1 when none
        self._open = ""  # "text" or "tool_use"
        self._tools: dict[int, int] = {}  # tool call index -> content block index
        self._finish: str | None = None
        self._usage: Any = None
        self.finished = False

    def feed(self, chunk: bytes) -> bytes:
        events, self._buffer, unframed = split_events(self._buffer + chunk, self._max)
        return b"".join(self._event(event) for event in events) + unframed

    def _event(self, event: bytes) -> bytes:
        name, data = parse_event(event)
        if name == "done":
            return self._finish_message()
        if not isinstance(data, dict):
            return b""
        if "error" in data and "choices" not in data:
            self.finished = True
            return b"event: error\ndata: " + error_to_anthropic(502, orjson.dumps(data)) + b"\n\n"
        out = [self._start(data)]
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None or choice.get("index", 0) != 0:
            return b"".join(out)
        delta = as_object(choice.get("delta"))
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open != "text":
                out.append(self._open_block({"type": "text", "text": ""}, "text"))
            out.append(_sse("content_block_delta", {"index": self._block,
                                                    "delta": {"type": "text_delta", "text": text}}))  # fmt: skip
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out.append(self._tool_delta(call))
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        return b"".join(out)

    def _start(self, data: dict[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {"id": str(data.get("id") or ""), "type": "message", "role": "assistant",
                   "model": str(data.get("model") or self._model), "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
        return _sse("message_start", {"message": message})

    def _open_block(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close_block()
        self._block += 1
        self._open = kind
        return out + _sse("content_block_start", {"index": self._block, "content_block": block})

    def _close_block(self) -> bytes:
        if not self._open:
            return b""
        self._open = ""
        return _sse("content_block_stop", {"index": self._block})

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        function = as_object(call.get("function"))
        position = call.get("index", 0)
        out = b""
        if position not in self._tools:
            block = {"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                     "input": {}}  # fmt: skip
            out = self._open_block(block, "tool_use")
            self._tools[position] = self._block
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and self._tools[position] == self._block:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += _sse("content_block_delta", {"index": self._block, "delta": delta})
        return out

    def _finish_message(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = self._start({}) + self._close_block()
        delta = {"stop_reason": FINISH_TO_STOP.get(str(self._finish), "end_turn"), "stop_sequence": None}
        out += _sse("message_delta", {"delta": delta, "usage": usage_to_anthropic(self._usage)})
        return out + _sse("message_stop", {})
