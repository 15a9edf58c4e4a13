"""ASGI plumbing the handlers share: types, headers, reading the body, sending JSON, errors and SSE."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from apps.core.errors import GatewayError, client_disconnected, request_too_large

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; 413 past ``limit`` bytes, 499 if the client went away."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise client_disconnected()
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise request_too_large(limit)
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


async def watch_disconnect(receive: Receive, flag: asyncio.Event) -> None:
    """Set ``flag`` when the client goes away (run as a task while a stream is relayed)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            flag.set()
            return


async def send_json(send: Send, status: int, body: bytes, request_id: str, extra: Headers | None = None) -> None:
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id.encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: GatewayError, request_id: str) -> None:
    await send_json(send, exc.status, exc.body(), request_id, exc.headers)


async def send_events(send: Send, events: bytes, headers: Headers) -> None:
    """A whole SSE stream in one message (an answer we already hold, replayed as a stream)."""
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": events, "more_body": False})
