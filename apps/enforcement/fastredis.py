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

With a ``ReplicaWait`` (``REDIS_WAIT_REPLICAS``), a *durable* batch (money
reserved, a ledger event) is answered only after ``WAIT <n> <timeout>`` on the
same connection, so only once n replicas hold it: Redis replicates
asynchronously, and what a primary acknowledged but had not yet sent on dies
with it in a failover. WAIT covers every write sent before it on its
connection, so the durable batches written in one event-loop turn share one
WAIT at the end of that write: a WAIT blocks the connection (Redis reads
nothing more from it until the replicas answer), and one per request would
queue every request behind every other's replication round trip. A WAIT that
counts fewer replicas than asked (a replica down or slow past the timeout) is
logged and counted, never raised: the write did reach the primary, which is
all the request needed before WAIT existed. For a second after one, durable
batches go without WAIT (counted short too), so a missing replica does not
hold the connection for a timeout in every loop turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from apps.enforcement.fastcluster import FastRedisCluster

logger = logging.getLogger(__name__)

# Bounds on the replica WAIT's settings. No more replicas than a primary plausibly has; a timeout of at
# least 1 ms because Redis reads 0 as "block forever", which would hang every request when a replica is
# gone, and at most 10 s because the connection's own command timeout must stay the longer one.
MAX_WAIT_REPLICAS = 16
MAX_WAIT_TIMEOUT_MS = 10_000
# A missing replica makes every durable batch come back short: one warning per this many seconds, with
# the count, instead of one per request.
SHORT_WAIT_LOG_SECONDS = 10.0
# After a WAIT comes back short, durable batches on that connection go without one for this long (counted
# short: they are on the primary alone, as they would be after waiting), then one WAIT tries again. A WAIT
# for a replica that is gone holds its connection for the whole timeout, and every request's commands
# queue behind it: one per loop turn would cut the connection to 1000 / timeout_ms turns a second and
# time requests out, failing them, where a short WAIT is meant to cost a metric and a log line.
SHORT_WAIT_BACKOFF_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """``WAIT <replicas> <timeout_ms>`` at the end of each durable batch (``replicas`` 0: none);
    ``on_short`` is called for each that counts fewer replicas (a metric). Refused with ValueError unless
    both numbers are plain ints within bounds: they come from the environment."""

    replicas: int = 0
    timeout_ms: int = 50
    on_short: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if type(self.replicas) is not int or not 0 <= self.replicas <= MAX_WAIT_REPLICAS:
            raise ValueError(
                f"REDIS_WAIT_REPLICAS must be an integer from 0 to {MAX_WAIT_REPLICAS}, got {self.replicas!r}"
            )
        if type(self.timeout_ms) is not int or not 1 <= self.timeout_ms <= MAX_WAIT_TIMEOUT_MS:
            raise ValueError(
                f"REDIS_WAIT_TIMEOUT_MS must be an integer from 1 to {MAX_WAIT_TIMEOUT_MS}, got {self.timeout_ms!r}"
            )

    def check_against(self, command_timeout: float | None) -> None:
        """Refuse a timeout the connection's own ``command_timeout`` would cut short: its watchdog would
        drop the connection, and every request on it, before a WAIT for an absent replica returned."""
        if self.replicas and command_timeout is not None and self.timeout_ms >= command_timeout * 1000 / 2:
            raise ValueError(
                f"REDIS_WAIT_TIMEOUT_MS ({self.timeout_ms}) must be under half the Redis command timeout "
                f"({command_timeout * 1000:g} ms): a WAIT waits behind the commands sent before it"
            )


NO_WAIT = ReplicaWait()


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
        # The reply of the WAIT that will end this turn's write, shared by every durable batch in it.
        self.wait_reply: asyncio.Future[Any] | None = None
        self.wait_command = b""
        # The loop it was made on (a protocol is made by its loop's ``create_connection``): kept, because
        # on Python 3.11 each ``asyncio.get_running_loop()`` is a ``getpid`` system call, and the hot path
        # asked for it two or three times a request.
        self.loop = asyncio.get_running_loop()

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
            self.loop.call_soon(self.flush)
        self.pending.append(data)

    def wait_after(self, command: bytes) -> asyncio.Future[Any]:
        """The reply of ``command`` (a WAIT), written after everything queued in this loop turn, once for
        all the batches that ask in it: WAIT covers every write sent before it on the connection."""
        if self.wait_reply is None:
            if not self.pending:
                asyncio.get_running_loop().call_soon(self.flush)
            self.wait_reply = asyncio.get_running_loop().create_future()
            self.wait_command = command
        return self.wait_reply

    def flush(self) -> None:
        wait_reply, self.wait_reply = self.wait_reply, None
        if wait_reply is not None:
            if self.closed:
                wait_reply.set_exception(RedisConnectionError("Redis connection lost before WAIT was sent"))
                wait_reply.exception()  # its batch hears of it from its own replies' futures first
            else:
                self.expect([wait_reply], asyncio.get_running_loop())
                self.pending.append(self.wait_command)
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
    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 2.0,
        command_timeout: float | None = None,
        wait: ReplicaWait = NO_WAIT,
    ) -> None:
        """``wait``: the WAIT that ends each durable batch."""
        wait.check_against(command_timeout)
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
        self.wait = wait
        wait_command: tuple[Any, ...] = ("WAIT", wait.replicas, wait.timeout_ms)
        self._wait_command = hiredis.pack_command(wait_command)
        self._short_waits = 0  # since the last warning
        self._short_logged = 0.0
        self._wait_resumes = 0.0  # monotonic time before which durable batches skip WAIT (after a short one)

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
        loop = protocol.loop
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

    async def execute_many(self, commands: list[tuple[Any, ...]], *, durable: bool = False) -> list[Any]:
        """Send several commands in one write; replies (errors included, not raised) in order. ``durable``:
        answer only once the replicas asked for hold them (see the module's docstring)."""
        protocol = await self.connection()
        if not (durable and self.wait.replicas):
            return await self._send(commands, protocol)
        futures, waited = self.submit_durable(commands, protocol)
        replies = [await future for future in futures]
        await self.check_wait(waited)
        return replies

    def send_soon(self, commands: list[tuple[Any, ...]], *, durable: bool = False) -> Sent:
        """``execute_many``, started now (see ``Sent``). On an open connection with no WAIT to add, the
        commands are queued for this loop turn's write before this returns, and the replies are awaited
        where they are needed, with no task (a task, or a future gathering the replies, costs the gateway
        thousands of instructions a request). Otherwise a task sends them (connecting first, or with the
        WAIT), also started now."""
        protocol = self._protocol
        if protocol is None or protocol.closed or (durable and self.wait.replicas):
            return Sent.of_task(self.execute_many(commands, durable=durable))
        futures = self.submit(commands, protocol)
        return Sent(_replies(futures), futures[-1])

    def submit_durable(
        self, commands: list[tuple[Any, ...]], protocol: _Protocol
    ) -> tuple[list[asyncio.Future[Any]], asyncio.Future[Any] | None]:
        """``submit``, with this node's WAIT after the commands (shared with the other durable batches
        of this loop turn); the second future is the WAIT's reply, for ``check_wait`` (None: no WAIT sent,
        for ``SHORT_WAIT_BACKOFF_SECONDS`` after a short one)."""
        futures = self.submit(commands, protocol)
        if time.monotonic() < self._wait_resumes:
            return futures, None
        return futures, protocol.wait_after(self._wait_command)

    async def check_wait(self, waited: asyncio.Future[Any] | None) -> None:
        """Log and count a WAIT that answered fewer replicas than asked, an error (which says the same
        thing: the write is on the primary alone), or one not sent because the last was short."""
        reply = None if waited is None else await waited
        if isinstance(reply, int) and not isinstance(reply, bool) and reply >= self.wait.replicas:
            return
        now = time.monotonic()
        if waited is not None:
            self._wait_resumes = now + SHORT_WAIT_BACKOFF_SECONDS
        self._short_waits += 1
        if self.wait.on_short is not None:
            self.wait.on_short()
        if now - self._short_logged >= SHORT_WAIT_LOG_SECONDS:
            logger.warning(
                "Redis at %s:%s: %d durable write(s) acknowledged by fewer than %d replica(s) within %d ms "
                "(last answer %r); they are on the primary only until its replicas catch up",
                self._host, self._port, self._short_waits, self.wait.replicas, self.wait.timeout_ms, reply,
            )  # fmt: skip
            self._short_waits, self._short_logged = 0, now

    def pipeline(self) -> FastPipeline:
        return FastPipeline(self)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


class Sent:
    """A batch on its way: ``replies`` to await for every reply in order (errors included; a lost
    connection raised), and ``last``, the last command's reply alone, a future that is settled whoever
    awaits ``replies`` (a caller hangs its own handling of that command on it)."""

    __slots__ = ("replies", "last")  # a plain class: made on every request, and a dataclass's init costs more

    def __init__(self, replies: Awaitable[list[Any]], last: asyncio.Future[Any]) -> None:
        self.replies = replies
        self.last = last

    @classmethod
    def of_task(cls, batch: Coroutine[Any, Any, list[Any]]) -> Sent:
        """``batch`` run as a task, started now."""
        last: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return cls(asyncio.ensure_future(_marking_last(batch, last)), last)


async def _replies(futures: list[asyncio.Future[Any]]) -> list[Any]:
    return [await future for future in futures]


async def _marking_last(batch: Coroutine[Any, Any, list[Any]], last: asyncio.Future[Any]) -> list[Any]:
    # ``last`` is settled before the task ends, so its callbacks run before those of whoever awaits the task.
    try:
        replies = await batch
    except asyncio.CancelledError:
        last.cancel()
        raise
    except BaseException as exc:
        last.set_exception(exc)
        last.exception()  # its owner hears of it from the batch too
        raise
    last.set_result(replies[-1])
    return replies


def xadd_command(stream: str, *fields: bytes) -> tuple[Any, ...]:
    """An ``XADD`` of ``fields`` (name, value, name, value...) to ``stream``, with an id Redis assigns."""
    return ("XADD", stream, "*", *fields)


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
        self.commands.append(xadd_command(stream, *flat))
        return self

    async def execute(self, *, durable: bool = False) -> list[Any]:
        """Replies in order; Redis errors come back as ``ResponseError`` values, not raised. ``durable``:
        only once the replicas the client waits for hold them."""
        return await self._client.execute_many(self.commands, durable=durable)

    def send_soon(self, *, durable: bool = False) -> Sent:
        """``execute``, started now (see ``FastRedis.send_soon``)."""
        return self._client.send_soon(self.commands, durable=durable)
