"""GET /healthz (liveness) and /readyz (readiness) of one gateway process, for load balancers and Kubernetes.

Liveness is the event loop answering. Readiness asks what a request needs:
Redis answering a PING, Postgres answering ``SELECT 1``, and this process's
policy snapshot known current within ``GATEWAY_READY_MAX_SNAPSHOT_AGE_SECONDS``
(a process whose rebuilds fail, or that cannot see the version counter, would
serve revoked keys and old budgets). 200 when all hold, else 503; the body
says which check failed. The Postgres check keeps one connection per process
(``application_name`` ``costcontrol-readyz-<pid>``) and opens a new one only
after a failure: a probe every second from every load balancer must not cost a
backend start each time.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson
import psycopg

from apps.gateway.asgi import Send, send_json
from apps.gateway.runtime import Runtime

CHECK_TIMEOUT_SECONDS = 2.0


async def live(send: Send, request_id: str) -> None:
    await send_json(send, 200, b'{"status":"ok"}', request_id)


async def ready(rt: Runtime, send: Send, request_id: str) -> None:
    redis_check, postgres_check = await asyncio.gather(_redis(rt), _POSTGRES.check(rt.limits.database_url))
    age = rt.policy.age()
    snapshot_check: dict[str, Any] = {
        "ok": age <= rt.limits.ready_max_snapshot_age,
        "age_seconds": round(age, 3),
        "version": rt.policy.current.version,
    }
    checks = {"redis": redis_check, "postgres": postgres_check, "policy_snapshot": snapshot_check}
    ok = all(check["ok"] for check in checks.values())
    body = orjson.dumps({"status": "ready" if ok else "unready", "checks": checks})
    await send_json(send, 200 if ok else 503, body, request_id)


async def _redis(rt: Runtime) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await rt.redis.ping()
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


class _PostgresProbe:
    """``SELECT 1`` on a connection kept between probes; a failed probe drops it and the next one reconnects."""

    def __init__(self) -> None:
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock: asyncio.Lock | None = None

    async def check(self, url: str) -> dict[str, Any]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # concurrent probes share the one connection, one at a time
            started = time.perf_counter()
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    if not await self._select_one(url, reused=True):
                        await self._drop()  # the kept connection died (a restart, an idle timeout): one new try
                        await self._select_one(url, reused=False)
            except Exception as exc:
                await self._drop()
                return {"ok": False, "error": _error(exc)}
            return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}

    async def _select_one(self, url: str, *, reused: bool) -> bool:
        """True once ``SELECT 1`` answered; False if a kept connection failed (raises on a new one)."""
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(
                url, connect_timeout=int(CHECK_TIMEOUT_SECONDS), autocommit=True,
                application_name=f"costcontrol-readyz-{os.getpid()}",
            )  # fmt: skip
            reused = False
        try:
            await self._connection.execute("SELECT 1")
        except psycopg.OperationalError:
            if reused:
                return False
            raise
        return True

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                async with asyncio.timeout(1):
                    await connection.close()
            except Exception:  # noqa: S110 (it is being thrown away; a broken socket may not close cleanly)
                pass


_POSTGRES = _PostgresProbe()


def _error(exc: BaseException) -> str:
    # The exception's class only: a driver's message can name hosts, ports and users.
    return type(exc).__name__
