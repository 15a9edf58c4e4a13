"""The size cap on ``POST /v1/files``, enforced while the body arrives, before Django reads it.

Django's ASGI handler reads a request's whole body (spooling it to a temporary file) before any
view runs, so a view cannot refuse an oversized upload in time. This wrapper sits in front of it
for uploads: a ``Content-Length`` over the cap is answered 413 at once, without reading the body;
a body without one (chunked) is counted as it arrives and answered 413 as soon as it passes the
cap. Either way nothing past the cap is read, and what was read went to disk, not memory.
The 413 is in OpenAI's error shape, so the SDK raises its usual ``APIStatusError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from apps.core.errors import GatewayError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Room for the multipart framing and the small form fields around the file itself; the file's own
# size is checked against BATCH_MAX_FILE_BYTES exactly once the body is parsed (services.file_upload).
MULTIPART_ALLOWANCE = 64 * 1024


def file_too_large(max_file_bytes: int) -> GatewayError:
    return GatewayError(
        413, f"The file is larger than the {max_file_bytes} byte limit.", param="file", code="file_too_large"
    )


async def _refuse(send: Send, error: GatewayError) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            # The client may still be sending: tell it this connection ends with the answer.
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": error.body()})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def capped_upload(app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, max_file_bytes: int) -> None:
    """Run ``app`` (Django) on an upload whose body may not pass ``max_file_bytes`` plus the framing."""
    limit = max_file_bytes + MULTIPART_ALLOWANCE
    declared = _content_length(scope)
    if declared is not None and declared < 0:
        await _refuse(send, GatewayError(400, "The Content-Length header is not a number.", code="invalid_request"))
        return
    if declared is not None and declared > limit:
        await _refuse(send, file_too_large(max_file_bytes))
        return

    received = 0
    over = False

    async def counted() -> Message:
        nonlocal received, over
        if over:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                # Django sees a client that went away, stops reading and answers nothing; we answer.
                over = True
                return {"type": "http.disconnect"}
        return message

    await app(scope, counted, send)
    if over:
        await _refuse(send, file_too_large(max_file_bytes))
