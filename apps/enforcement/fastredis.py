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
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # Commands queued during one turn of the event loop, written together at its end.
        self.pending: list[bytes] = []

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
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Give up on this connection: every command in flight fails with ``error``."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


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

    async def _connection(self) -> _Protocol:
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
                    loop.create_connection(_Protocol, self._host, self._port), self._connect_timeout
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

    async def _send(self, commands: list[tuple[Any, ...]], protocol: _Protocol) -> list[Any]:
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        protocol.waiters.extend(futures)
        protocol.queue(b"".join(hiredis.pack_command(command) for command in commands))
        if self._command_timeout is None:
            return [await future for future in futures]
        try:
            async with asyncio.timeout(self._command_timeout):
                return [await future for future in futures]
        except TimeoutError:
            error = RedisTimeoutError(f"Redis at {self._host}:{self._port} did not answer in {self._command_timeout}s")
            protocol.fail(error)
            raise error from None

    async def execute(self, *command: Any) -> Any:
        """Run one command; a Redis error reply is raised."""
        [reply] = await self._send([command], await self._connection())
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send several commands in one write; replies (errors included, not raised) in order."""
        return await self._send(commands, await self._connection())

    def pipeline(self) -> FastPipeline:
        return FastPipeline(self)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


class FastPipeline:
    """Collects commands for one round trip; the method names follow redis-py's where used."""

    def __init__(self, client: FastRedis) -> None:
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
