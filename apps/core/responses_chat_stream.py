"""A Chat Completions stream, translated event by event into the Responses API's typed events.

What a Responses client reads, from the chat chunks of a Chat-only provider:
``response.created`` and ``response.in_progress`` first; at the first text,
``response.output_item.added`` (a message) and ``response.content_part.added``, then one
``response.output_text.delta`` per chunk; at each new tool call,
``response.output_item.added`` (a function call) and its
``response.function_call_arguments.delta``s. Items stay open until the chat stream ends
(``data: [DONE]``; chat interleaves parallel tool calls by index): then each gets its
``…done`` events, in output order, and ``response.completed`` (``response.incomplete``
when the answer was cut by its length) carries the whole response with its usage. Every
event has its ``sequence_number``. A stream that ends without ``[DONE]`` gets no terminal
event, so the relay counts it as truncated. A chat error in the stream becomes
``response.failed``.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.core.anthropic_stream import parse_event, split_events
from apps.core.responses_chat import (
    finish,
    first_choice,
    function_call_item,
    message_item,
    response_shell,
    usage_to_responses,
)


class ChatToResponses:
    def __init__(self, *, response_id: str, payload: dict[str, Any], model: str, max_event_bytes: int) -> None:
        self.response = response_shell(response_id, payload, model)
        self._suffix = response_id.removeprefix("resp_")
        self._max = max_event_bytes
        self._buffer = b""
        self._sequence = 0
        self._started = False
        self._ended = False
        self._output: list[dict[str, Any]] = []  # items in output order, completed as the stream goes
        self._message: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool call index -> its function_call item
        self._finish_reason: Any = None

    def feed(self, chunk: bytes) -> bytes:
        events, self._buffer, unframed = split_events(self._buffer + chunk, self._max)
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._emit("response.created", response=self._view("in_progress")))
            out.append(self._emit("response.in_progress", response=self._view("in_progress")))
        for event in events:
            if self._ended:
                break
            name, data = parse_event(event)
            if name == "done":
                out.extend(self._end())
            elif isinstance(data, dict):
                out.extend(self._chunk(data))
        return b"".join(out) + unframed

    def _emit(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _view(self, status: str) -> dict[str, Any]:
        return {**self.response, "status": status, "output": list(self._output)}

    def _chunk(self, data: dict[str, Any]) -> list[bytes]:
        if isinstance(data.get("error"), dict):
            self._ended = True
            error = data["error"]
            self.response["error"] = {"code": str(error.get("code") or error.get("type") or "server_error"),
                                      "message": str(error.get("message") or "")}  # fmt: skip
            return [self._emit("response.failed", response=self._view("failed"))]
        if isinstance(data.get("model"), str) and data["model"]:
            self.response["model"] = data["model"]
        if isinstance(data.get("service_tier"), str):
            self.response["service_tier"] = data["service_tier"]
        if data.get("usage") is not None:
            self.response["usage"] = usage_to_responses(data["usage"])
        choice = first_choice(data)
        if choice is None:
            return []
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return []
        out: list[bytes] = []
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.extend(self._text(content))
        tool_calls = delta.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            if isinstance(call, dict):
                out.extend(self._tool_call(call))
        return out

    def _text(self, delta: str) -> list[bytes]:
        out = []
        if self._message is None:
            self._message = message_item(f"msg_{self._suffix}", "", status="in_progress")
            self._output.append(self._message)
            index = len(self._output) - 1
            out.append(self._emit("response.output_item.added", output_index=index,
                                  item={**self._message, "content": []}))  # fmt: skip
            out.append(self._emit("response.content_part.added", item_id=self._message["id"], output_index=index,
                                  content_index=0, part=dict(self._message["content"][0])))  # fmt: skip
        self._message["content"][0]["text"] += delta
        index = self._output.index(self._message)
        out.append(self._emit("response.output_text.delta", item_id=self._message["id"], output_index=index,
                              content_index=0, delta=delta, logprobs=[]))  # fmt: skip
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        position: int = call["index"] if type(call.get("index")) is int else 0
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        item = self._calls.get(position)
        if item is None:
            call_id: str = call["id"] if isinstance(call.get("id"), str) else f"call_{self._suffix}_{position}"
            item = function_call_item(f"fc_{self._suffix}_{position}", call_id, str(function.get("name") or ""), "",
                                      status="in_progress")  # fmt: skip
            self._calls[position] = item
            self._output.append(item)
            out.append(self._emit("response.output_item.added", output_index=len(self._output) - 1, item=dict(item)))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            out.append(self._emit("response.function_call_arguments.delta", item_id=item["id"],
                                  output_index=self._output.index(item), delta=arguments))  # fmt: skip
        return out

    def _end(self) -> list[bytes]:
        self._ended = True
        out = []
        for index, item in enumerate(self._output):
            item["status"] = "completed"
            if item["type"] == "message":
                part = item["content"][0]
                out.append(self._emit("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=part["text"], logprobs=[]))  # fmt: skip
                out.append(self._emit("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))  # fmt: skip
            else:
                out.append(self._emit("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))  # fmt: skip
            out.append(self._emit("response.output_item.done", output_index=index, item=item))
        finish(self.response, self._finish_reason)
        self.response["output"] = self._output
        terminal = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return [*out, self._emit(terminal, response=self.response)]
