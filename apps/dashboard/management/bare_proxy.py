"""The bare-proxy reference that `make bench` measures the gateway against (a benchmark helper, not product code).

The least a Python proxy can do for one chat request: read the body, parse it, forward it on one pooled
aiohttp session, read the answer's ``usage``, and return the answer. No key check, no limits, no ledger,
no routing. It runs under the same server and flags as the gateway (uvicorn, uvloop, httptools, one
worker), so the gap between the two rows of the report is what our own stages cost per request.

Run by ``bench_gateway`` as ``python -m uvicorn apps.dashboard.management.bare_proxy:app`` with the upstream's
``/v1`` URL in ``BARE_PROXY_UPSTREAM`` (and the provider key in ``BARE_PROXY_KEY``). It imports no Django.

With ``BARE_PROXY_CLIENT=lean`` it forwards on the gateway's own upstream client
(``apps/core/upstream_http.py``) instead of aiohttp: the issue's reference is the aiohttp proxy, and this
second row shows how much of the gap to it that client closes, and what a proxy doing nothing else costs.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from apps.core.egress import EgressPolicy
from apps.core.upstream_http import UpstreamHttp

Scope = dict[str, Any]
Message = dict[str, Any]
JSON = [(b"content-type", b"application/json")]


class BareProxy:
    def __init__(self, upstream: str, key: str, *, lean: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        # Like the gateway, it sends the provider's key, not the app's.
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        self.http: aiohttp.ClientSession | None = None
        # The loopback upstream is the only place it forwards to.
        self.lean = UpstreamHttp(EgressPolicy(allow=["127.0.0.0/8"]), connect_timeout=5) if lean else None
        # Read so that the work matches what the gateway must do to bill a request.
        self.prompt_tokens = 0

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.http = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                        auto_decompress=False,
                        skip_auto_headers=("User-Agent",),
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.http is not None:
                        await self.http.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.http is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        payload = orjson.loads(b"".join(chunks))
        url = self.upstream + scope["path"][len("/v1") :]
        if self.lean is not None:
            reply = await self.lean.post(url, self.headers, orjson.dumps(payload), limit=1 << 26, read_timeout=60)
            body, status = reply.body, reply.status
        else:
            async with self.http.post(url, data=orjson.dumps(payload), headers=self.headers) as resp:
                body = await resp.read()
                status = resp.status
        usage = orjson.loads(body).get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": body})


app = BareProxy(
    os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:9100/v1"),
    os.environ.get("BARE_PROXY_KEY", "sim"),
    lean=os.environ.get("BARE_PROXY_CLIENT") == "lean",
)
