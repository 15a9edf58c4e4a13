"""Relay: the answer to the app, as JSON or as the provider's SSE stream, event by event.

``SseRelay`` is pure (bytes in, bytes out): it passes whole events through,
notes the usage chunk (removing the one we forced upstream when the app did
not ask for it), keeps a bounded copy of the events for the cache and for an
estimate when the provider sends no usage, and refuses to buffer an upstream
that never ends an event. ``relay_stream`` drives it against the provider's
response and the app's connection.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import orjson

from apps.core.anthropic_stream import MessagesToChat
from apps.core.errors import upstream_unavailable
from apps.core.responses_chat_stream import ChatToResponses
from apps.core.text import choice_text, completion_estimate, json_object
from apps.core.upstream_http import UpstreamStream
from apps.gateway.asgi import JSON_HEADERS, SSE_HEADERS, Headers, Receive, Send, send_events, watch_disconnect
from apps.gateway.call import Call


class SseRelay:
    """Passes complete SSE events through and notes the usage chunk.

    Only whole events are forwarded, so the usage-only chunk (``choices: []``)
    we forced upstream can be removed when the app did not ask for it. Events
    are kept so completion tokens can be counted if the provider sends no usage,
    up to ``max_event_bytes`` x 8 of them (past that only their size is counted).
    An upstream that sends ``max_event_bytes`` without an event boundary sets
    ``overflowed``: the caller cuts the stream off, and nothing more is buffered.
    SSE lets lines end in CRLF, LF or CR; CRLF and CR are rewritten to LF on the
    way in, so an upstream framed with ``\r\n\r\n`` is seen as framed.
    """

    def __init__(self, *, strip_usage_chunk: bool, max_event_bytes: int) -> None:
        self._strip = strip_usage_chunk
        self._max_event = max_event_bytes
        self._max_kept = 8 * max_event_bytes
        self._buffer = b""
        self._events: list[bytes] = []
        self._kept = 0  # bytes in _events
        self._unkept = 0  # bytes of events passed on but not kept (past _max_kept)
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.overflowed = False
        self._after_cr = False  # a chunk ended in CR: an LF starting the next one belongs to it

    def complete_events(self, chunk: bytes) -> bytes:
        """Add ``chunk``; return the whole events it completes (b"" if none), noting an overflow."""
        if self._after_cr or b"\r" in chunk:  # memchr: LF-framed providers pay one scan
            chunk = self._to_lf(chunk)
        self._buffer += chunk
        cut = self._buffer.rfind(b"\n\n")
        if cut < 0:
            if len(self._buffer) > self._max_event:
                self.overflowed = True
                self._buffer = b""
            return b""
        complete, self._buffer = self._buffer[: cut + 2], self._buffer[cut + 2 :]
        if len(self._buffer) > self._max_event:
            self.overflowed = True
            self._buffer = b""
        return complete

    def feed(self, chunk: bytes) -> bytes:
        complete = self.complete_events(chunk)
        if not complete:
            return b""
        if b'"usage"' not in complete and b"[DONE]" not in complete:
            self._keep(complete)
            return complete
        kept = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(b"data: [DONE]"):
                self.done = True
            elif b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event:
                data = event_json(event)
                usage = data.get("usage") if data is not None else None
                if isinstance(usage, dict) and usage:
                    self.usage = usage
                    if self._strip and not data.get("choices"):  # type: ignore[union-attr]
                        continue
            self._keep(event)
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _keep(self, events: bytes) -> None:
        if self._kept + len(events) <= self._max_kept:
            self._events.append(events)
            self._kept += len(events)
        else:
            self._unkept += len(events)

    def _to_lf(self, chunk: bytes) -> bytes:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def completion(self) -> dict[str, Any] | None:
        """The finished stream as one chat.completion (for the cache), or None if it cannot be rebuilt."""
        if self._unkept:
            return None
        recorder = StreamRecorder()
        for blob in self._events:
            for event in blob.split(b"\n\n"):
                data = event_json(event)
                if data is not None:
                    recorder.add(data)
        return recorder.completion(self.usage)

    def estimate_completion_tokens(self) -> int:
        parts: list[str] = []
        for blob in self._events:
            for event in blob.split(b"\n\n"):
                data = event_json(event)
                choices = data.get("choices") if data is not None else None
                if isinstance(choices, list):
                    parts.extend(choice_text(choice, "delta") for choice in choices)
        # Events past what we keep count by their size: more than their text, never less.
        return completion_estimate("".join(parts)) + self._unkept // 4


def event_json(event: bytes) -> dict[str, Any] | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    return None
                return parsed if isinstance(parsed, dict) else None
    return None


def sse_from_completion(body: dict[str, Any], *, include_usage: bool, request_id: str) -> list[bytes]:
    """A stored chat.completion replayed as the stream a provider would have sent."""
    base = {
        "id": body.get("id", request_id),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": body.get("system_fingerprint"),
    }
    extra = {"usage": None} if include_usage else {}
    events = []
    for choice in body.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        events.append({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}], **extra})  # fmt: skip
        content = message.get("content") or ""
        # Word-sized pieces, like a provider's token stream (whitespace kept, so the text joins back exactly).
        for piece in re.findall(r"\S+\s*|\s+", content):
            events.append({**base, "choices": [{"index": index, "delta": {"content": piece},
                                                "finish_reason": None}], **extra})  # fmt: skip
        if message.get("tool_calls"):
            events.append({**base, "choices": [{"index": index, "delta": {"tool_calls": message["tool_calls"]},
                                                "finish_reason": None}], **extra})  # fmt: skip
        events.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason")}], **extra})  # fmt: skip
    if include_usage and body.get("usage"):
        events.append({**base, "choices": [], "usage": body["usage"]})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


class StreamRecorder:
    """Rebuilds a chat.completion from stream chunks, so a finished stream can be cached."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.finish_reason: str | None = None
        self.meta: dict[str, Any] = {}
        self.cacheable = True

    def add(self, chunk: dict[str, Any]) -> None:
        if not self.meta:
            self.meta = {k: chunk.get(k) for k in ("id", "model", "created", "system_fingerprint")}
        choices = chunk.get("choices")
        if choices is not None and not isinstance(choices, list):
            self.cacheable = False  # a malformed stream is never cached
            return
        for choice in choices or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                self.cacheable = False
                continue
            if choice.get("index", 0) != 0:
                self.cacheable = False  # n > 1 streams are not cached
                continue
            if delta.get("tool_calls") or delta.get("function_call"):
                self.cacheable = False  # tool-call deltas are fragments; not reassembled here
            content = delta.get("content")
            if isinstance(content, str):
                self.content.append(content)
            elif content is not None:
                self.cacheable = False
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str):
                self.finish_reason = finish_reason

    def completion(self, usage: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self.cacheable or self.finish_reason not in ("stop", "length"):
            return None
        return {
            **self.meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.content), "refusal": None},
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],  # fmt: skip
            "usage": usage,
        }


# --- sending --------------------------------------------------------------------------------------


async def send_answer(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """A provider's whole answer (or its error), passed through as it came. With its length, as providers
    send it: the app's client need not parse chunks, and the server need not frame them."""
    length = (b"content-length", b"%d" % len(body))
    await send({"type": "http.response.start", "status": status, "headers": [*JSON_HEADERS, length, *headers]})
    await send({"type": "http.response.body", "body": body})


async def send_completion(
    send: Send, call: Call, payload: dict[str, Any], completion: dict[str, Any], headers: Headers
) -> None:
    """Send a whole chat completion we already hold, as JSON or, when the app asked to stream, as SSE."""
    if call.streamed:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        events = sse_from_completion(completion, include_usage=include_usage, request_id=call.request_id)
        await send_events(send, b"".join(events), headers)
    else:
        await send_answer(send, 200, orjson.dumps(completion), headers)


async def relay_stream(
    send: Send,
    receive: Receive,
    call: Call,
    response: UpstreamStream,
    *,
    strip_usage_chunk: bool,
    max_event_bytes: int,
    translate: MessagesToChat | ChatToResponses | None = None,
    relay: SseRelay | None = None,
) -> SseRelay:
    """Pass the provider's stream to the app as it arrives; stop when either side goes away.

    Returns the relay (its usage, its events) with the last bytes not yet sent (``flush``): the caller
    sends them with ``more_body`` off once the request is recorded. ``call.status_code`` says how the
    stream ended: 200 (whole), 499 (the app left) or 502 (truncated or unframed). ``translate`` reads
    an Anthropic provider's events as chat chunks first (or a Chat-only provider's chunks as Responses events).
    """
    disconnected = asyncio.Event()
    watcher = asyncio.create_task(watch_disconnect(receive, disconnected))
    if relay is None:
        relay = SseRelay(strip_usage_chunk=strip_usage_chunk, max_event_bytes=max_event_bytes)
    headers = [*SSE_HEADERS, (b"x-request-id", call.request_id.encode()), call.route_header(), *call.extra_headers]
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for chunk in response.chunks():
                if call.ttft_ms is None:
                    call.ttft_ms = call.elapsed_ms()
                out = relay.feed(chunk if translate is None else translate.feed(chunk))
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if relay.overflowed:
                    # No event boundary within the bound: never buffer an upstream without end.
                    error = upstream_unavailable(
                        f"The provider's stream sent more than {max_event_bytes} bytes without an event boundary; "
                        "it was cut off.",
                        code="upstream_stream_truncated",
                    )
                    await _end_with(send, call, error)
                    break
                if disconnected.is_set():
                    call.status_code, call.error_code = 499, "client_disconnected"
                    break
        except (TimeoutError, aiohttp.ClientError):
            await _end_with(
                send, call, upstream_unavailable("The provider's stream ended early.", code="upstream_stream_truncated")
            )
    finally:
        watcher.cancel()
        response.release()
    if call.status_code == 200 and not relay.done:
        call.status_code, call.error_code = 502, "upstream_stream_truncated"
    return relay


async def _end_with(send: Send, call: Call, error: Any) -> None:
    """Close a broken stream with an error event the SDK raises."""
    call.status_code, call.error_code = error.status, error.code
    await send({"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n", "more_body": True})


def answer_object(body: bytes) -> dict[str, Any]:
    """A provider's JSON answer as an object ({} when it is not one: priced by estimate, never cached)."""
    return json_object(body) or {}
