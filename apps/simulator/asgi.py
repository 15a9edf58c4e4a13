"""The simulator as an ASGI app (no framework, no Django: it is the benchmark's baseline) and its server."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from typing import Any

import orjson

from apps.simulator.batch_api import BatchEmulator
from apps.simulator.directives import echo_headers
from apps.simulator.endpoints import SimConfig, Simulator
from apps.simulator.messages_api import MessagesApi, anthropic_error
from apps.simulator.replies import (
    JSON_HEADERS,
    Headers,
    Rejected,
    Reply,
    error,
    server_error,
)
from apps.simulator.responses_api import ResponsesApi

Scope = MutableMapping[str, Any]


Message = MutableMapping[str, Any]


Receive = Callable[[], Awaitable[Message]]


Send = Callable[[Message], Awaitable[None]]


ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


CONFIG_ENV = "SIMULATOR_CONFIG"


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def wait(seconds: float, receive: Receive) -> bool:
    """Sleep ``seconds``; False as soon as the client disconnects (the request body is read by now)."""
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    listener = asyncio.ensure_future(receive())
    done, _ = await asyncio.wait((sleeper, listener), return_when=asyncio.FIRST_COMPLETED)
    if sleeper in done:
        listener.cancel()
        return True
    sleeper.cancel()
    return False


async def send_json(send: Send, status: int, body: bytes, headers: Headers = JSON_HEADERS) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


HEALTH_BODY = orjson.dumps({"status": "ok"})


MISSING_KEY = error(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    code="invalid_api_key",
)


def authorized(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value[:7].lower() == b"bearer " and bool(value[7:].strip())
    return False


def authorized_anthropic(scope: Scope) -> bool:
    """Anthropic's clients send ``x-api-key``; a Bearer token is accepted too."""
    for name, value in scope["headers"]:
        if name == b"x-api-key" and value.strip():
            return True
    return authorized(scope)


def build_app(config: SimConfig) -> ASGIApp:
    """An ASGI app simulating the OpenAI API as ``config`` says (see the module docstring)."""
    simulator = Simulator(config)
    responses = ResponsesApi(simulator.id_prefix)
    rng = simulator.rng
    base_delay_s = config.latency_ms / 1000
    jitter_s = config.jitter_ms / 1000
    chunk_delay_s = config.stream_chunk_delay_ms / 1000
    error_rate = config.error_rate
    handlers: dict[str, Callable[[dict[str, Any]], Reply]] = {
        "/v1/chat/completions": simulator.chat,
        "/v1/completions": simulator.completions,
        "/v1/embeddings": simulator.embeddings,
    }
    batch_handlers = {**handlers, "/v1/responses": responses.create}

    def answer(handler: Callable[[dict[str, Any]], Reply], body: dict[str, Any]) -> Reply:
        try:
            return handler(body)
        except Rejected as rejected:
            return rejected.reply

    batch_api = BatchEmulator(
        {path: functools.partial(answer, handler) for path, handler in batch_handlers.items()},
        error,
        lambda status, body, headers=None: Reply(status, body, headers or JSON_HEADERS),
    )

    messages_api = MessagesApi(simulator.new_id)

    async def messages(scope: Scope, receive: Receive) -> Reply:
        if scope["method"] != "POST":
            return anthropic_error(405, f"Method {scope['method']} not allowed")
        if not authorized_anthropic(scope):
            return anthropic_error(401, "x-api-key header is required")
        if error_rate and rng.random() < error_rate:
            return anthropic_error(500, "Internal server error (simulated)")
        try:
            body = orjson.loads(await read_body(receive))
        except orjson.JSONDecodeError:
            return anthropic_error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return anthropic_error(400, "The request body must be a JSON object.")
        return messages_api.create(body)

    async def route(scope: Scope, receive: Receive) -> Reply:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/v1/messages":
            return await messages(scope, receive)
        if path.startswith(("/v1/files", "/v1/batches")):
            if not authorized(scope):
                return MISSING_KEY
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            reply: Reply = batch_api.handle(method, path, content_type, await read_body(receive))
            return reply
        if path == "/v1/responses" or path.startswith("/v1/responses/"):
            if not authorized(scope):
                return MISSING_KEY
            if error_rate and rng.random() < error_rate:
                return server_error()
            body = None
            if method == "POST" and path == "/v1/responses":
                try:
                    body = orjson.loads(await read_body(receive))
                except orjson.JSONDecodeError:
                    return error(400, "We could not parse the JSON body of your request. (simulated)")
                if not isinstance(body, dict):
                    return error(400, "The request body must be a JSON object.")
            return responses.handle(method, path, body)
        handler = handlers.get(path)
        if handler is not None:
            allowed = "POST"
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            allowed = "GET"
        else:
            return error(404, f"Invalid URL ({method} {path})")
        if method != allowed:
            return error(405, f"Method {method} not allowed for {path}", headers=[(b"allow", allowed.encode())])
        if not authorized(scope):
            return MISSING_KEY
        if error_rate and rng.random() < error_rate:
            return server_error()
        if handler is None:
            if path == "/v1/models":
                return Reply(200, simulator.models_body)
            return simulator.model(path[len("/v1/models/") :])
        raw = await read_body(receive)
        if b"[[sim:echo_header=" in raw:
            raw = echo_headers(raw, scope["headers"])
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error(400, "We could not parse the JSON body of your request. (simulated)")
        if not isinstance(body, dict):
            return error(400, "The request body must be a JSON object.")
        return answer(handler, body)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await send_json(send, 200, HEALTH_BODY)
            return
        reply = await route(scope, receive)
        delay_s = base_delay_s + reply.delay_s + (rng.uniform(0, jitter_s) if jitter_s else 0.0)
        if delay_s > 0 and not await wait(delay_s, receive):
            return
        if reply.chunks is None:
            await send_json(send, reply.status, reply.body, reply.headers)
            return
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        last = len(reply.chunks) - 1
        for position, chunk in enumerate(reply.chunks):
            if position == reply.cut:
                # Returning mid-body makes the server drop the connection: a truncated stream.
                return
            pause = reply.drip_s if reply.drip_s is not None else chunk_delay_s
            if position and pause:
                await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": chunk, "more_body": position != last})

    return app


def app_from_environment() -> ASGIApp:
    """The app for uvicorn's worker processes, configured from ``SIMULATOR_CONFIG`` (JSON)."""
    return build_app(SimConfig(**orjson.loads(os.environ[CONFIG_ENV])))


def run(host: str, port: int, config: SimConfig, workers: int = 1) -> None:
    """Serve the simulator with uvicorn until interrupted."""
    import uvicorn

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        # A [[sim:timeout]] request still waiting must not hold up shutdown.
        "timeout_graceful_shutdown": 1,
    }
    if workers == 1:
        uvicorn.run(build_app(config), **options)
        return
    # Worker processes import the app, so the config travels in the environment.
    os.environ[CONFIG_ENV] = orjson.dumps(asdict(config)).decode()
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)
