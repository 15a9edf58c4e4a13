"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API on the same pipeline.

The request is translated to a chat request (``apps.core.anthropic``) and runs
through ``proxy.run`` like any other: authentication (``x-api-key`` or Bearer),
budgets, limits, cache, routing, the ledger. What the pipeline sends back is
translated on its way out by ``AnthropicReply``: a chat completion becomes a
message, chat chunks become Messages events, and every error takes Anthropic's
shape. ``count_tokens`` answers from our own prompt estimate (the figure budgets
reserve), without calling a provider: Anthropic does not bill it either.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from apps.core.anthropic import (
    COUNT_TOKENS_PATH,
    completion_to_message,
    error_to_anthropic,
    messages_to_chat,
)
from apps.core.anthropic_stream import ChatToMessages
from apps.core.errors import GatewayError, method_not_allowed, model_not_allowed
from apps.core.request import ENDPOINT_CHAT, prompt_estimate, validate
from apps.gateway.asgi import Receive, Scope, Send, read_body, send_error, send_json
from apps.gateway.handlers import proxy
from apps.gateway.runtime import Runtime
from apps.gateway.stages.auth import authenticate
from apps.gateway.stages.validate import parse_body, read_messages_request

logger = logging.getLogger(__name__)


class AnthropicReply:
    """An ASGI ``send`` that turns what the pipeline sends (OpenAI-shaped) into Anthropic's shapes.

    A JSON answer is held until its last byte, then sent as a message (``answers``) or passed
    through; an error becomes ``{"type": "error", "error": {...}}``; an SSE stream is translated
    event by event as it goes.
    """

    def __init__(self, send: Send, *, answers: bool, max_event_bytes: int) -> None:
        self._send = send
        self._answers = answers
        self._max_event_bytes = max_event_bytes
        self._start: dict[str, Any] | None = None
        self._body: list[bytes] = []
        self._stream: ChatToMessages | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            if any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers):
                self._stream = ChatToMessages(model="", max_event_bytes=self._max_event_bytes)
                await self._send(message)
            else:
                self._start = message
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        more = bool(message.get("more_body", False))
        if self._stream is not None:
            out = self._stream.feed(message.get("body", b""))
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self._body.append(message.get("body", b""))
        if more or self._start is None:
            return
        status: int = self._start["status"]
        body = b"".join(self._body)
        if status >= 400:
            body = error_to_anthropic(status, body)
        elif self._answers:
            body = _message_body(body)
        headers = [(k, v) for k, v in self._start.get("headers") or [] if k != b"content-length"]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def _message_body(body: bytes) -> bytes:
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    return orjson.dumps(completion_to_message(completion)) if isinstance(completion, dict) else body


def _authorization(headers: dict[bytes, bytes]) -> bytes | None:
    """Anthropic's clients send the key as ``x-api-key``; Bearer works too."""
    if b"authorization" in headers:
        return headers[b"authorization"]
    key = headers.get(b"x-api-key")
    return b"Bearer " + key if key else None


async def handle(rt: Runtime, scope: Scope, receive: Receive, send: Send, path: str, request_id: str) -> None:
    counting = path == COUNT_TOKENS_PATH
    reply = AnthropicReply(send, answers=not counting, max_event_bytes=rt.limits.max_sse_event_bytes)
    try:
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], f"on {path}")
        headers = dict(scope["headers"])
        if counting:
            await _count_tokens(rt, reply, receive, headers, request_id)
            return
        call = proxy.start_call(rt, headers, ENDPOINT_CHAT, request_id, _authorization(headers))
        await proxy.run(rt, reply, receive, call, headers,
                        read_messages_request(call, receive, headers, rt.limits.max_body_bytes))  # fmt: skip
    except GatewayError as exc:
        await send_error(reply, exc, request_id)
    except Exception:
        logger.exception("unhandled gateway error on %s", path)
        failed = GatewayError(500, "The gateway failed to process the request.", type="api_error")
        await send_error(reply, failed, request_id)


async def _count_tokens(
    rt: Runtime, send: Send, receive: Receive, headers: dict[bytes, bytes], request_id: str
) -> None:
    """``{"input_tokens": n}``: our estimate of the prompt, as budgets reserve it; no provider is called."""
    key = authenticate(rt.snapshot, _authorization(headers))
    body: dict[str, Any] = parse_body(await read_body(receive, rt.limits.max_body_bytes))
    # count_tokens takes no max_tokens; the translation wants one.
    chat = messages_to_chat({**body, "max_tokens": 1})
    validate(ENDPOINT_CHAT, chat)
    if key.allowed_models and chat["model"] not in key.allowed_models:
        raise model_not_allowed(chat["model"])
    answer = orjson.dumps({"input_tokens": prompt_estimate(ENDPOINT_CHAT, chat)})
    await send_json(send, 200, answer, request_id)
