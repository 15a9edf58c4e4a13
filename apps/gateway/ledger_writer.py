"""Appends ledger events to the Redis stream, never losing one.

When Redis refuses the write, the event goes to a local spool file and a
background task re-sends the spool once Redis answers again. Both round trips
are durable: with ``REDIS_WAIT_REPLICAS`` set, the event counts as written once
that many replicas hold it (and whatever settle or cache write shares its
round trip), so a failover right after cannot take it away.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import orjson

from apps.core.events import EVENT_FIELD
from apps.enforcement.fastredis import FastPipeline
from apps.enforcement.redis_clients import FastClient
from apps.gateway import metrics

logger = logging.getLogger(__name__)


class LedgerWriter:
    def __init__(self, redis_client: FastClient, stream: str, spool_dir: Path) -> None:
        self._redis = redis_client
        self._stream = stream
        self._spool = spool_dir / f"ledger-spool-{os.getpid()}.jsonl"
        self._spool_dir = spool_dir
        self._resend_task: asyncio.Task[None] | None = None

    async def write(self, event: dict[str, Any], *, pipeline: FastPipeline | None = None) -> None:
        """Append ``event``, after the commands already queued in ``pipeline`` (settling a reservation,
        storing an answer in the cache), in the same round trip."""
        payload = orjson.dumps(event)
        try:
            pipe = pipeline if pipeline is not None else self._redis.pipeline()
            pipe.xadd(self._stream, {EVENT_FIELD: payload})
            *others, added = await pipe.execute(durable=True)
            for result in others:
                if isinstance(result, Exception):
                    logger.error("a command sent with ledger event %s failed: %r", event.get("request_id"), result)
            if isinstance(added, Exception):
                raise added
        except Exception:
            logger.exception("ledger XADD failed; spooling request %s", event.get("request_id"))
            metrics.ledger_spooled()
            await asyncio.get_running_loop().run_in_executor(None, self._append_spool, payload)

    def _append_spool(self, payload: bytes) -> None:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        while True:
            with self._spool.open("ab") as fh:
                # Under the lock a re-send claims a spool by, and after checking it is still the file at
                # its name: a file claimed between open and lock takes no more lines (they would be
                # unlinked with it, unsent), so the line goes to a fresh one.
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                if not _still_named(fh.fileno(), self._spool):
                    continue
                fh.write(payload + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                return

    def start(self) -> None:
        self._resend_task = asyncio.create_task(self._resend_forever())

    async def stop(self) -> None:
        if self._resend_task:
            self._resend_task.cancel()
            await asyncio.gather(self._resend_task, return_exceptions=True)

    async def _resend_forever(self) -> None:
        while True:
            await asyncio.sleep(2)
            try:
                await self.resend_spools()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("ledger spool re-send failed; will retry", exc_info=True)

    async def resend_spools(self) -> None:
        """Send every spooled event (from any process that left a spool) to the stream."""
        loop = asyncio.get_running_loop()
        for spool in sorted(self._spool_dir.glob("ledger-spool-*.jsonl")):
            claimed = await loop.run_in_executor(None, _claim, spool)
            if claimed is None:
                continue
            lines = [line for line in claimed.read_bytes().splitlines() if line]
            pipe = self._redis.pipeline()
            for line in lines:
                pipe.xadd(self._stream, {EVENT_FIELD: line})
            try:
                failed = [reply for reply in await pipe.execute(durable=True) if isinstance(reply, Exception)]
                if failed:
                    raise failed[0]
            except Exception:
                # Back for the next try, under a name of its own: renamed onto the process's spool it would
                # replace the lines written there since the claim. Re-sends are deduplicated on ingest.
                claimed.rename(claimed.with_suffix(".jsonl"))
                raise
            claimed.unlink()
        # A crash between claim and unlink leaves a .sending file: re-queue it.
        # The consumer's insert is idempotent on request_id, so a re-send is harmless.
        # Only files untouched for a minute: a younger one is another process's send in flight.
        cutoff = time.time() - 60
        for stale in self._spool_dir.glob("ledger-spool-*.sending"):
            if stale.stat().st_ctime < cutoff and not stale.with_suffix(".jsonl").exists():
                stale.rename(stale.with_suffix(".jsonl"))


def _still_named(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not renamed away since it was opened)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _claim(spool: Path) -> Path | None:
    """Take ``spool`` for sending: renamed, atomically, to a name only this claim uses (None: another
    process took it first). Under its lock, so no append is half-written into it; an append that opened it
    before the rename finds it renamed once it has the lock, and writes to a new spool instead."""
    base = spool.name.split(".", 1)[0]  # ledger-spool-<pid>, without an earlier claim's token
    claimed = spool.with_name(f"{base}.{secrets.token_hex(6)}.sending")
    try:
        with spool.open("rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if not _still_named(fh.fileno(), spool):
                return None
            spool.rename(claimed)
    except FileNotFoundError:
        return None
    return claimed
