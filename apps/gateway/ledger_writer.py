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
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import orjson

from apps.core.events import EVENT_FIELD
from apps.enforcement.fastredis import FastPipeline, Sent, xadd_command
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
        # Spool appends in flight, by the append (its reply's future) whose event they hold.
        self._spooling: dict[asyncio.Future[Any], asyncio.Future[None]] = {}

    async def write(self, event: dict[str, Any], *, pipeline: FastPipeline | None = None) -> None:
        """Append ``event``, after the commands already queued in ``pipeline`` (settling a reservation,
        storing an answer in the cache), in the same round trip; return once it is on the stream or spooled."""
        await self.write_soon(event, pipeline=pipeline)

    def write_soon(self, event: dict[str, Any], *, pipeline: FastPipeline | None = None) -> Awaitable[None]:
        """``write``, sent now: the round trip is on its way before this returns, and a failed append is
        spooled as soon as it fails, whoever awaits. Await the result to know the event is on the stream
        or in the spool (and to hear of a command beside it that failed)."""
        payload = orjson.dumps(event)
        request_id = event.get("request_id")
        append = xadd_command(self._stream, EVENT_FIELD, payload)
        try:
            # Most events go alone: sent as one command, without a pipeline object or a field dict.
            if pipeline is None:
                sent = self._redis.send_soon([append], durable=True)
            else:
                pipeline.commands.append(append)
                sent = pipeline.send_soon(durable=True)
        except Exception as exc:  # a command that cannot even be encoded: spooled like a refused one
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(exc)
            sent = Sent(refused, refused)
        sent.last.add_done_callback(lambda added: self._appended(added, payload, request_id))
        return self._landed(sent, request_id)

    def _appended(self, added: asyncio.Future[Any], payload: bytes, request_id: Any) -> None:
        """The append's reply: an error (or a lost connection) sends the event to the spool at once."""
        error: BaseException | None
        if added.cancelled():
            error = asyncio.CancelledError()
        else:
            error = added.exception()
            if error is None and isinstance(added.result(), Exception):
                error = added.result()
        if error is None:
            return
        logger.error("ledger XADD failed (%r); spooling request %s", error, request_id)
        metrics.ledger_spooled()
        spooling = asyncio.get_running_loop().run_in_executor(None, self._append_spool, payload)
        self._spooling[added] = spooling
        spooling.add_done_callback(lambda done: self._spooled(added, done, request_id))

    def _spooled(self, added: asyncio.Future[Any], spooling: asyncio.Future[None], request_id: Any) -> None:
        del self._spooling[added]
        if not spooling.cancelled() and spooling.exception() is not None:
            logger.critical("ledger event %s could not be spooled either: %r", request_id, spooling.exception())

    async def _landed(self, sent: Sent, request_id: Any) -> None:
        try:
            replies = await sent.replies
        except Exception:
            replies = []  # the append's failure is ``_appended``'s (it ran first: its callback came before)
        for result in replies[:-1]:
            if isinstance(result, Exception):
                logger.error("a command sent with ledger event %s failed: %r", request_id, result)
        spooling = self._spooling.get(sent.last)
        if spooling is not None:
            await spooling

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
        if self._spooling:  # appends still in flight: an event on its way to the spool is not dropped
            await asyncio.gather(*self._spooling.values(), return_exceptions=True)

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
