"""The policy snapshot a gateway process serves, kept fresh.

The snapshot is built by the control plane's adapter (``apps.policy.build``,
handed in at start-up; it reads Postgres, so it runs in a thread), held in
memory, and rebuilt when the control plane announces a change on Redis pub/sub
or when the version counter moved (polled as a safety net). Request handling
only reads ``current``: no SQL on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from apps.core import names
from apps.core.snapshot import Snapshot
from apps.gateway import metrics, watch

logger = logging.getLogger(__name__)


class PolicyStore:
    """Holds the current snapshot for one process and keeps it fresh."""

    # Rebuild at least this often even when no change was announced, so a lost
    # announcement (Redis blip during publish) heals on its own.
    MAX_AGE_SECONDS = 60.0

    def __init__(
        self, redis_client: aioredis.Redis, prefix: str, build: Callable[[int], Snapshot], *, poll_seconds: float
    ) -> None:
        self._redis = redis_client
        self._build = build
        self._version_key = names.policy_version(prefix)
        self._channel = names.policy_channel(prefix)
        self._poll_seconds = poll_seconds
        self._built_at = 0.0
        # When the snapshot was last known to be current (built, or its version found unchanged): readiness.
        self.confirmed_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.current = Snapshot(version=-1)

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [
            asyncio.create_task(watch.follow(self._redis, self._channel, self.refresh, "policy")),
            asyncio.create_task(watch.every(self._poll_seconds, self._check, "policy version check")),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def refresh(self) -> None:
        async with self._refresh_lock:
            # Read the version before building: a change made during the build
            # bumps it again and the next poll rebuilds.
            version = int(await self._redis.get(self._version_key) or 0)
            loop = asyncio.get_running_loop()
            try:
                self.current = await loop.run_in_executor(None, self._build, version)
            except Exception:
                metrics.snapshot_failed()
                logger.critical(
                    "policy snapshot build FAILED: this process keeps serving policy version %s, built %.0f s ago; "
                    "key revocations and policy changes are NOT applied here until a build succeeds",
                    self.current.version, time.monotonic() - self._built_at, exc_info=True,
                )  # fmt: skip
                raise
            self._built_at = time.monotonic()
            self._confirmed()

    async def _check(self) -> None:
        """Rebuild when the version moved (an announcement we missed) or the snapshot is too old."""
        version = int(await self._redis.get(self._version_key) or 0)
        stale = time.monotonic() - self._built_at > self.MAX_AGE_SECONDS
        if version != self.current.version or stale:
            await self.refresh()
        else:
            self._confirmed()

    def _confirmed(self) -> None:
        self.confirmed_at = time.monotonic()
        metrics.snapshot_current(time.time())

    def age(self) -> float:
        """Seconds since the snapshot was last known to be current."""
        return time.monotonic() - self.confirmed_at
