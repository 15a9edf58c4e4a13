"""Circuit breakers per deployment (provider, model), shared by every gateway process.

closed → ``failures`` failures within ``window`` seconds → open (requests skip the
deployment) → after ``cooldown`` seconds half-open: one request, claimed across
processes, probes it → success closes, failure opens it again.

Redis holds the truth: a failure counter per deployment (expiring with the
window) and one hash of open breakers, ``deployment -> open until``. Each
process keeps a copy of that hash, reloaded when a process announces a change
on pub/sub and polled as a safety net, so a request checks a dict and only a
failure, or the half-open probe, talks to Redis. Counting failures in a window
instead of in a row means a success costs nothing.

Breakers are advice, not enforcement: their commands go through a client with a
command timeout, and a Redis that fails or stops answering leaves the breaker as
this process last saw it (logged), so it never hangs or fails a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from apps.core import names
from apps.gateway import metrics, watch

logger = logging.getLogger(__name__)

# Counts a failure and opens the breaker when it is one too many (lua/breaker_failure.lua, read once).
FAILURE_LUA = (Path(__file__).resolve().parent / "lua" / "breaker_failure.lua").read_text()

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


def deployment(provider_id: int, model: str) -> str:
    return f"{provider_id}:{model}"


class Breakers:
    def __init__(
        self,
        client: aioredis.Redis,
        subscriber: aioredis.Redis,
        prefix: str,
        *,
        failures: int,
        window_seconds: float,
        cooldown_seconds: float,
        poll_seconds: float,
    ) -> None:
        self._redis = client  # has a command timeout
        self._subscriber = subscriber  # pub/sub waits as long as it likes
        self._prefix = prefix
        self._hash = names.breaker_open(prefix)
        self._channel = names.breaker_channel(prefix)
        self._failures = max(failures, 1)
        self._window_ms = int(window_seconds * 1000)
        self._cooldown = cooldown_seconds
        self._poll_seconds = poll_seconds
        self._script = client.register_script(FAILURE_LUA)
        self._open: dict[str, float] = {}
        self._seen_open: set[str] = set()  # every deployment seen open (its gauge goes back to 0 when it closes)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.reload()
        self._tasks = [
            asyncio.create_task(watch.follow(self._subscriber, self._channel, self.reload, "breaker")),
            asyncio.create_task(watch.every(self._poll_seconds, self.reload, "breaker poll")),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    def tripped(self, name: str) -> bool:
        """Whether the deployment ``name`` has a breaker open or half-open: only then do ``allow`` and
        ``success`` have anything to do (the hot path asks this first and skips their awaits)."""
        return name in self._open

    def state(self, provider_id: int, model: str) -> str:
        until = self._open.get(deployment(provider_id, model))
        if until is None:
            return CLOSED
        return OPEN if time.time() < until else HALF_OPEN

    async def allow(self, provider_id: int, model: str) -> bool:
        """May a request go to this deployment now? Half-open lets exactly one probe through."""
        name = deployment(provider_id, model)
        until = self._open.get(name)
        if until is None:
            return True
        if time.time() < until:
            return False
        claim_seconds = max(int(self._cooldown), 5)
        try:
            return bool(await self._redis.set(names.breaker_probe(self._prefix, name), b"1", nx=True, ex=claim_seconds))
        except (RedisError, OSError) as error:
            logger.warning("breaker probe claim for %s skipped, Redis: %s", name, error)
            return False  # stay open: other deployments, or the fallbacks, serve the request

    async def failure(self, provider_id: int, model: str) -> None:
        name = deployment(provider_id, model)
        keys = [names.breaker_failures(self._prefix, name), self._hash, names.breaker_probe(self._prefix, name)]
        args: list[str | int | float] = [name, time.time(), self._window_ms, self._failures, self._cooldown]
        try:
            if await self._script(keys=keys, args=args):
                logger.warning("circuit opened for %s", name)
                metrics.circuit_opened(name)
                await self._announce()
        except (RedisError, OSError) as error:
            logger.warning("breaker failure for %s not counted, Redis: %s", name, error)

    async def success(self, provider_id: int, model: str) -> None:
        """Close a half-open breaker after its probe answered; free for closed breakers."""
        name = deployment(provider_id, model)
        if name not in self._open:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._hash, name)
        pipe.delete(names.breaker_probe(self._prefix, name), names.breaker_failures(self._prefix, name))
        try:
            await pipe.execute()
            logger.info("circuit closed for %s", name)
            await self._announce()
        except (RedisError, OSError) as error:
            logger.warning("breaker for %s not closed, Redis: %s", name, error)

    async def reload(self) -> None:
        raw = await self._redis.hgetall(self._hash)
        self._open = {_text(key): float(value) for key, value in raw.items()}
        if self._open or self._seen_open:
            self._seen_open.update(self._open)
            metrics.circuits(set(self._open), self._seen_open)

    async def _announce(self) -> None:
        await self.reload()
        await self._redis.publish(self._channel, b"changed")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
