"""The data plane: a lean ASGI app for the OpenAI-compatible /v1 API.

Start-up opens the process's ``Runtime`` (connections, limiter, writers, the
policy snapshot); each request then goes to one handler per endpoint
(``handlers/proxy.py`` for chat, completions and embeddings, ``handlers/messages.py`` for
Anthropic's Messages API, ``handlers/responses.py`` for the Responses API, ``handlers/models.py``),
which runs the stages in ``stages/`` top to bottom. No Django request
handling, no ORM, no blocking call on the event loop: the snapshot is built by
the control plane's adapter, handed in by ``costcontrol/asgi.py``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable

from apps.core.anthropic import COUNT_TOKENS_PATH, MESSAGES_PATH
from apps.core.errors import GatewayError, method_not_allowed
from apps.core.request import ENDPOINT_PATHS
from apps.core.snapshot import Snapshot
from apps.gateway.asgi import Receive, Scope, Send, send_error
from apps.gateway.handlers import health, messages, models, proxy, responses
from apps.gateway.runtime import Runtime

logger = logging.getLogger(__name__)


class RequestIds:
    """Request ids: ``req_`` and 24 hex digits of the OS's randomness, as ``secrets.token_hex(12)`` made
    them, read for 256 ids at a time: one ``getrandom`` call per 256 requests, not one each (with its two
    Python calls, about 1% of a request's CPU in the gateway). A forked child starts a pool of its own: ids
    drawn from a copy of its parent's would repeat, and the ledger keeps one row per request id."""

    BATCH = 256

    def __init__(self) -> None:
        self._hex, self._at = "", 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._hex, self._at = "", 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(12 * self.BATCH).hex(), 0
        self._at = at + 24
        return "req_" + self._hex[at : at + 24]


request_ids = RequestIds()


class Gateway:
    """ASGI callable for /v1/*; also answers the lifespan protocol."""

    def __init__(self, build_snapshot: Callable[[int], Snapshot]) -> None:
        self._build_snapshot = build_snapshot
        self.runtime: Runtime | None = None
        self._startup_lock = asyncio.Lock()

    async def startup(self) -> Runtime:
        async with self._startup_lock:
            if self.runtime is None:
                self.runtime = await Runtime.start(self._build_snapshot)
                # What start-up loaded (Django, the snapshot, ~120k objects) lives as long as the process.
                # Left to the collector, every full collection walks all of it: 60-75 ms pauses every
                # couple of seconds under load on the dev box, which were the gateway's whole p99.
                # Collect start-up's garbage once, then keep the rest out of future collections.
                gc.collect()
                gc.freeze()
            return self.runtime

    async def shutdown(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        rt = self.runtime or await self.startup()
        path: str = scope["path"]
        method: str = scope["method"]
        request_id = request_ids.next()
        endpoint = ENDPOINT_PATHS.get(path)
        try:
            if path == "/v1/responses" or path.startswith("/v1/responses/"):
                await responses.handle(rt, scope, receive, send, request_id)
            elif endpoint is not None:
                if method != "POST":
                    raise method_not_allowed(method, f"on {path}")
                await proxy.handle(rt, scope, receive, send, endpoint, request_id)
            elif path in (MESSAGES_PATH, COUNT_TOKENS_PATH):
                await messages.handle(rt, scope, receive, send, path, request_id)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise method_not_allowed(method, f"on {path}")
                await models.handle(rt.snapshot, scope, send, path, request_id)
                rt.metrics.unrecorded("models", 200, None)
            elif path in ("/readyz", "/healthz"):
                if method not in ("GET", "HEAD"):
                    raise method_not_allowed(method, f"on {path}")
                await (health.ready(rt, send, request_id) if path == "/readyz" else health.live(send, request_id))
            else:
                raise GatewayError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        except GatewayError as exc:
            # Refused before it became a ledger row (those are counted as they are recorded).
            rt.metrics.unrecorded(endpoint or ("models" if path.startswith("/v1/models") else "other"), exc.status,
                                  exc.code)  # fmt: skip
            await send_error(send, exc, request_id)
        except Exception:
            logger.exception("unhandled gateway error on %s %s", method, path)
            await send_error(
                send, GatewayError(500, "The gateway failed to process the request.", type="api_error"), request_id
            )
