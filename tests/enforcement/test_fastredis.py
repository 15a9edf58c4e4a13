"""FastRedis's command timeout: one watchdog per connection, still a bound on every command.

Against the real Redis, and against a real loopback server that accepts connections and
reads what is written but never answers (a Redis that hangs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apps.enforcement.fastredis import FastRedis


@asynccontextmanager
async def _silent_server() -> AsyncIterator[str]:
    """A server that takes every byte and never replies; yields its redis:// URL."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


def test_a_command_nobody_answers_fails_within_its_timeout_with_everything_in_flight() -> None:
    async def scenario() -> tuple[list[BaseException | object], float]:
        async with _silent_server() as url:
            client = FastRedis(url, command_timeout=0.3)
            started = time.monotonic()
            first = asyncio.create_task(client.execute("PING"))
            await asyncio.sleep(0.1)  # a later command, in flight on the same connection
            results = await asyncio.gather(first, client.execute_many([("GET", "a"), ("GET", "b")]),
                                           return_exceptions=True)  # fmt: skip
            elapsed = time.monotonic() - started
            assert not client.connected  # replies could no longer be matched: the connection is dropped
            await client.close()
            return results, elapsed

    results, elapsed = asyncio.run(scenario())
    assert all(isinstance(result, RedisTimeoutError) for result in results), results
    assert "did not answer in 0.3s" in str(results[0])
    # The oldest command's deadline fails the connection, and the later one with it: no wait past 0.3 s.
    assert 0.25 <= elapsed < 2


def test_commands_answered_in_time_never_time_out_over_many_timeout_periods() -> None:
    async def scenario() -> int:
        client = FastRedis(settings.REDIS_URL, command_timeout=0.05)
        key = f"{settings.REDIS_PREFIX}fastredis:{time.time_ns()}"
        done = 0
        deadline = time.monotonic() + 0.5  # ten timeout periods with the watchdog re-armed throughout
        while time.monotonic() < deadline:
            replies = await asyncio.gather(*(client.execute("INCR", key) for _ in range(20)))
            done += len(replies)
            await asyncio.sleep(0.01)
        assert int(await client.execute("GET", key)) == done
        await client.execute("DEL", key)
        assert client.connected
        await client.close()
        return done

    assert asyncio.run(scenario()) > 0


def test_after_a_timeout_the_next_command_reconnects() -> None:
    async def scenario() -> None:
        async with _silent_server() as silent:
            client = FastRedis(silent, command_timeout=0.1)
            with pytest.raises(RedisTimeoutError):
                await client.execute("PING")
        # The same client pointed at a Redis that answers: a fresh connection, a fresh watchdog.
        real = urlsplit(settings.REDIS_URL)
        client._host, client._port = real.hostname or "127.0.0.1", real.port or 6379
        assert await client.execute("PING") == b"PONG"
        with pytest.raises(ResponseError):
            await client.execute("NOT-A-COMMAND")
        assert client.connected
        await client.close()

    asyncio.run(scenario())


def test_without_a_timeout_no_deadline_is_kept() -> None:
    async def scenario() -> None:
        client = FastRedis(settings.REDIS_URL)
        assert await client.execute("PING") == b"PONG"
        protocol = client._protocol
        assert protocol is not None and not protocol.deadlines and not protocol.waiters
        await client.close()

    asyncio.run(scenario())
