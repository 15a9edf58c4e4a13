"""GET /healthz (liveness) and /readyz (readiness) of one gateway process, for load balancers and Kubernetes.

Liveness is the event loop answering. Readiness asks what a request needs:
Redis answering a PING, Postgres answering ``SELECT 1``, and this process's
policy snapshot known current within ``GATEWAY_READY_MAX_SNAPSHOT_AGE_SECONDS``
(a process whose rebuilds fail, or that cannot see the version counter, would
serve revoked keys and old budgets). 200 when all hold, else 503; the body
says which check failed.
"""

from __future__ import annotations

import asyncio
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
    redis_check, postgres_check = await asyncio.gather(_redis(rt), _postgres(rt.limits.database_url))
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


async def _postgres(url: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            connection = await psycopg.AsyncConnection.connect(url, connect_timeout=int(CHECK_TIMEOUT_SECONDS))
            async with connection:
                await connection.execute("SELECT 1")
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _error(exc: BaseException) -> str:
    # The exception's class only: a driver's message can name hosts, ports and users.
    return type(exc).__name__
