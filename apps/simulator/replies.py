"""What the simulator answers: OpenAI-shaped errors, JSON bodies and SSE chunks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

Headers = list[tuple[bytes, bytes]]


JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


STREAM_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Reply:
    """A response to send: a JSON body, or SSE chunks (``chunks``) cut off after ``cut`` of them."""

    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=lambda: JSON_HEADERS)
    chunks: list[bytes] | None = None
    cut: int | None = None
    delay_s: float = 0.0
    drip_s: float | None = None  # pause between chunks, instead of the configured one


class Rejected(Exception):
    """Raised while handling a request to answer it with ``reply`` (an OpenAI error)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Headers | None = None,
) -> Reply:
    body = orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
    return Reply(status, body, JSON_HEADERS + headers if headers else JSON_HEADERS)


def invalid(message: str, param: str | None = None, code: str | None = None) -> Rejected:
    return Rejected(error(400, message, param=param, code=code))


def rate_limited() -> Reply:
    return error(
        429,
        "Rate limit reached for requests (simulated). Please try again in 1s.",
        type_="requests",
        code="rate_limit_exceeded",
        headers=[(b"retry-after", b"1")],
    )


def server_error() -> Reply:
    return error(
        500,
        "The server had an error while processing your request. Sorry about that! (simulated)",
        type_="server_error",
    )


def overloaded() -> Reply:
    return error(503, "The engine is currently overloaded, please try again later. (simulated)", type_="server_error")


def overloaded_529() -> Reply:
    """Anthropic's "overloaded" status; the Messages endpoint answers it in Anthropic's shape."""
    return error(529, "Overloaded (simulated).", type_="overloaded_error")


DIRECTIVE_ERRORS: dict[str, Callable[[], Reply]] = {
    "429": rate_limited,
    "500": server_error,
    "503": overloaded,
    "529": overloaded_529,
}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_reply(chunks: list[bytes], fail_at: int | None, delay_s: float) -> Reply:
    return Reply(200, headers=STREAM_HEADERS, chunks=chunks, cut=fail_at, delay_s=delay_s)
