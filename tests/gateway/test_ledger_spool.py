"""The ledger spool keeps every event that Redis refused, also while a re-send of it fails.

Against a Redis that is down (a loopback port nobody listens on), then the real one.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import orjson
from django.conf import settings

from apps.core.events import EVENT_FIELD
from apps.enforcement.fastredis import FastRedis
from apps.gateway.ledger_writer import LedgerWriter

EVENTS = 400


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _spooled(folder: Path) -> list[bytes]:
    return [line for path in folder.iterdir() for line in path.read_bytes().splitlines() if line]


def _spooled_if_any(folder: Path) -> list[bytes]:
    return _spooled(folder) if folder.exists() else []


def test_events_spooled_while_a_resend_fails_are_all_kept_and_then_sent(tmp_path: Path) -> None:
    """Writes spool in executor threads while re-sends claim the spool and fail: a failed re-send must
    not put its file back over the lines spooled since it claimed it."""
    stream = f"{settings.REDIS_PREFIX}spool-test:{uuid.uuid4().hex[:8]}"
    ids = [f"req_{n}" for n in range(EVENTS)]

    async def spool_everything() -> None:
        down = FastRedis(_dead_url(), connect_timeout=0.5)
        writer = LedgerWriter(down, stream, tmp_path)

        async def resend_until(done: asyncio.Event) -> int:
            failures = 0
            while not done.is_set():
                try:
                    await writer.resend_spools()
                except Exception:  # noqa: BLE001 (Redis is down: every re-send with lines fails)
                    failures += 1
                await asyncio.sleep(0)
            return failures

        done = asyncio.Event()
        resender = asyncio.create_task(resend_until(done))
        for start in range(0, EVENTS, 20):
            await asyncio.gather(*(writer.write({"request_id": i}) for i in ids[start : start + 20]))
        done.set()
        assert await resender > 0, "the re-sends ran while Redis was down"

    asyncio.run(spool_everything())
    assert sorted(orjson.loads(line)["request_id"] for line in _spooled(tmp_path)) == sorted(ids)

    async def resend_to_redis() -> list[bytes]:
        up = FastRedis(settings.REDIS_URL)
        try:
            await LedgerWriter(up, stream, tmp_path).resend_spools()
            entries = await up.execute("XRANGE", stream, "-", "+")
            await up.execute("DEL", stream)
            return [dict(zip(fields[::2], fields[1::2], strict=True))[EVENT_FIELD] for _id, fields in entries]
        finally:
            await up.close()

    sent = asyncio.run(resend_to_redis())
    assert sorted(orjson.loads(event)["request_id"] for event in sent) == sorted(ids)
    assert not _spooled(tmp_path)


def test_an_append_that_fails_is_spooled_at_once_while_nobody_awaits_it(tmp_path: Path) -> None:
    """The gateway sends a request's event before its answer and awaits the round trip after it: a slow
    app must not keep a failed append in memory. A 'Redis' that drops the connection once written to."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = FastRedis(f"redis://127.0.0.1:{port}/0", connect_timeout=1, command_timeout=5)
        await client.connection()  # open: the append is queued at once, without a task
        writer = LedgerWriter(client, "unused", tmp_path)
        landed = writer.write_soon({"request_id": "req_slow_app"})
        for _ in range(200):  # the answer's send, blocked by a slow app, would be here
            if _spooled_if_any(tmp_path):
                break
            await asyncio.sleep(0.01)
        before = _spooled(tmp_path)
        await landed
        server.close()
        return before, _spooled(tmp_path)

    before, after = asyncio.run(scenario())
    assert [orjson.loads(line)["request_id"] for line in before] == ["req_slow_app"]
    assert after == before
