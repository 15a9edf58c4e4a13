"""A minimal pipelined Redis client for the data plane's per-request commands.

Every request costs one or two Redis round trips (limits, then ledger + settle
+ cache). redis-py's asyncio client spends more CPU per command than the
gateway spends on everything else, so the hot path uses this instead: one
connection, commands written straight to the transport, replies parsed by
hiredis and matched to waiters in order (Redis answers in order on a
connection), no pool, no locks. Commands issued in the same event-loop turn
(concurrent requests) go out in one write. Pub/sub and the control plane keep
redis-py.

Replies come back as hiredis returns them; Redis errors as ``ResponseError``.
A lost connection fails the commands in flight with ``ConnectionError`` and the
next command reconnects. With ``command_timeout``, a command not answered in
time raises ``TimeoutError`` (redis-py's) and drops the connection with
everything in flight on it: replies are matched to waiters by order, so once
one is missing no later reply could be trusted.

The timeout is one timer per connection, not one per command: commands are
answered in the order they were sent, so the oldest unanswered one is always
the first to expire. The timer is set for that command's deadline; when it
fires and the command is still waiting, the connection fails; otherwise it is
set again for the next oldest. Per command this costs a float in a deque
instead of a timer handle scheduled and cancelled on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from apps.enforcement.fastcluster import FastRedisCluster


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float | None = None, describe: str = "Redis") -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: deque[asyncio.Future[Any]] = deque()
        # With a timeout: each waiter's deadline (loop time), in the same order as ``waiters``.
        self.deadlines: deque[float] = deque()
        self.timeout = timeout
        self._describe = describe
        self._watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # Commands queued during one turn of the event loop, written together at its end.
        self.pending: list[bytes] = []

    def expect(self, futures: list[asyncio.Future[Any]], loop: asyncio.AbstractEventLoop) -> None:
        """Wait for one reply per future, in order; with a timeout, each must come within it."""
        self.waiters.extend(futures)
        if self.timeout is None:
            return
        deadline = loop.time() + self.timeout
        self.deadlines.extend([deadline] * len(futures))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        """The watchdog: fail the connection if its oldest unanswered command is past its deadline."""
        self._watchdog = None
        if not self.deadlines or self.closed:
            return
        loop = asyncio.get_running_loop()
        oldest = self.deadlines[0]
        # uvloop's timers have millisecond resolution and may fire just before the deadline:
        # within a millisecond counts as due, or the timer would be set again for the same instant.
        if oldest <= loop.time() + 0.001:
            self.fail(RedisTimeoutError(f"{self._describe} did not answer in {self.timeout}s"))
        else:
            self._watchdog = loop.call_at(oldest, self._check_deadline)

    def queue(self, data: bytes) -> None:
        """Write ``data`` at the end of this loop turn, with whatever else concurrent requests queued.

        Under concurrency this turns many small writes (a syscall each, and a read each on the
        Redis side) into one; a lone request pays only a ``call_soon``.
        """
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        data, self.pending = b"".join(self.pending), []
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        deadlines = self.deadlines if self.timeout is not None else None
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiters.popleft()
            if deadlines is not None:
                deadlines.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Give up on this connection: every command in flight fails with ``error``."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.abort()
        self.deadlines.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                # A batch's caller hears of it from its first future: the rest count as seen, so that
                # asyncio does not log each of them as an exception never retrieved.
                waiter.exception()


class FastRedis:
    def __init__(self, url: str, *, connect_timeout: float = 2.0, command_timeout: float | None = None) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._password = unquote(parts.password) if parts.password else None
        self._username = unquote(parts.username) if parts.username else None
        self._db = int(parts.path.lstrip("/") or 0)
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (False before the first command and after a loss)."""
        return self._protocol is not None and not self._protocol.closed

    async def connection(self) -> _Protocol:
        """The open connection, made (and authenticated) first if there is none."""
        current = self._protocol
        if current is not None and not current.closed:
            return current
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                _transport, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Protocol(self._command_timeout, f"Redis at {self._host}:{self._port}"),
                        self._host,
                        self._port,
                    ),
                    self._connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from exc
            self._protocol = protocol
            if self._password:
                auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
                await self._send([auth], protocol)
            if self._db:
                await self._send([("SELECT", self._db)], protocol)
            return protocol

    @staticmethod
    def submit(commands: list[tuple[Any, ...]], protocol: _Protocol) -> list[asyncio.Future[Any]]:
        """Queue ``commands`` on ``protocol`` now; one future per reply (a cluster client queues on
        several nodes before it waits on any)."""
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        protocol.expect(futures, loop)
        protocol.queue(b"".join(hiredis.pack_command(command) for command in commands))
        return futures

    async def _send(self, commands: list[tuple[Any, ...]], protocol: _Protocol) -> list[Any]:
        # A reply past the timeout fails the connection, and with it these futures (``_check_deadline``).
        return [await future for future in self.submit(commands, protocol)]

    async def execute(self, *command: Any) -> Any:
        """Run one command; a Redis error reply is raised."""
        [reply] = await self._send([command], await self.connection())
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send several commands in one write; replies (errors included, not raised) in order."""
        return await self._send(commands, await self.connection())

    def pipeline(self) -> FastPipeline:
        return FastPipeline(self)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


class FastPipeline:
    """Collects commands for one round trip; the method names follow redis-py's where used."""

    def __init__(self, client: FastRedis | FastRedisCluster) -> None:
        self._client = client
        self.commands: list[tuple[Any, ...]] = []

    def set(self, key: str, value: bytes, ex: int | None = None) -> FastPipeline:
        self.commands.append(("SET", key, value, "EX", ex) if ex else ("SET", key, value))
        return self

    def xadd(self, stream: str, fields: dict[bytes, bytes]) -> FastPipeline:
        flat: list[bytes] = []
        for name, value in fields.items():
            flat += [name, value]
        self.commands.append(("XADD", stream, "*", *flat))
        return self

    async def execute(self) -> list[Any]:
        """Replies in order; Redis errors come back as ``ResponseError`` values, not raised."""
        return await self._client.execute_many(self.commands)
