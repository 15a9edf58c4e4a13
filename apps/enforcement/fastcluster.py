"""FastRedis for a Redis Cluster: each command goes to the node that serves its key's slot.

The cluster splits the 16,384 hash slots between its primaries; a key's slot is
CRC16 of its hash tag (``apps.core.names`` tags every key one script touches
alike, so a script always runs on one node). This client asks a node for the
slot map (``CLUSTER SLOTS``) before its first command, keeps one ``FastRedis``
connection per primary, and sends each command of a batch to its node: the
commands for each node go out in one write, all writes before any wait, so a
batch that spans nodes still costs one round trip (in parallel). Replies come
back in the batch's order.

When the cluster moves a slot, a node answers ``MOVED`` (for good: the map is
read again before the next batch) or ``ASK`` (during a migration: ``ASKING`` then the command, on the
named node); the command is sent again there once. A lost connection marks the
map stale, so the next batch reads it again (a failover names a new primary).
``SCRIPT LOAD`` goes to every primary (EVALSHA runs wherever the keys are).

A durable batch (``REDIS_WAIT_REPLICAS``) ends with a WAIT on each node it
wrote to, on that node's connection and after that node's share: WAIT counts
the replicas of the primary it runs on, for the writes of its own connection,
so a WAIT routed like a keyless command (to any primary) would wait for the
wrong writes. A command sent again after ``MOVED``/``ASK`` gets its WAIT on the node
that finally took it.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apps.enforcement.fastredis import NO_WAIT, FastPipeline, FastRedis, ReplicaWait, Sent

Command = tuple[Any, ...]
Address = tuple[str, int]

# Commands whose first key is not their first argument, and where it is.
_SCRIPT_COMMANDS = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"})
# Commands about the server, not a key: any node answers them (SCRIPT goes to every primary).
_KEYLESS = frozenset({"PING", "ECHO", "INFO", "TIME", "PUBLISH", "CLUSTER", "SCRIPT", "ASKING", "AUTH", "HELLO"})


def command_key(command: Command) -> str | bytes | None:
    """The key a command's node is chosen by, or None for a command about the server."""
    name = command[0].upper() if isinstance(command[0], str) else command[0].decode().upper()
    if name in _SCRIPT_COMMANDS:
        return command[3] if int(command[2]) > 0 else None
    if name in _KEYLESS or len(command) < 2:
        return None
    return command[1]


def slot_of(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


class FastRedisCluster:
    """The ``FastRedis`` interface (``execute``, ``execute_many``, ``pipeline``) over a cluster."""

    def __init__(
        self,
        url: str,
        *,
        seeds: list[Address] | None = None,
        connect_timeout: float = 2.0,
        command_timeout: float | None = None,
        wait: ReplicaWait = NO_WAIT,
    ) -> None:
        wait.check_against(command_timeout)
        parts = urlsplit(url)
        self._seed: Address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        # Every node the URL named: the map is read from the first that answers (the seed may be down).
        self._seeds: list[Address] = list(dict.fromkeys([self._seed, *(seeds or [])]))
        # Every node is reached with the seed's credentials.
        self._userinfo = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._wait = wait
        self._nodes: dict[Address, FastRedis] = {}
        self._slots: list[FastRedis | None] = []  # by slot; empty until the map is read
        self._primaries: list[FastRedis] = []
        self._stale = True
        self._refreshing: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        """Whether every primary's connection is up (False before the map is read and after a loss)."""
        return not self._stale and all(node.connected for node in self._primaries)

    def _node(self, address: Address) -> FastRedis:
        node = self._nodes.get(address)
        if node is None:
            host, port = address
            node = self._nodes[address] = FastRedis(
                f"redis://{self._userinfo}{host}:{port}",
                connect_timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                wait=self._wait,
            )
        return node

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers (the seeds, then the nodes known)."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            errors = []
            for address in dict.fromkeys([*self._seeds, *self._nodes]):
                try:
                    reply = await self._node(address).execute("CLUSTER", "SLOTS")
                except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError) as error:
                    errors.append(f"{address[0]}:{address[1]}: {error}")
                    continue
                self._load_map(reply, default_host=address[0])
                return
            raise RedisConnectionError("no node of the Redis Cluster answered CLUSTER SLOTS: " + "; ".join(errors))

    def _load_map(self, reply: list[Any], *, default_host: str) -> None:
        slots: list[FastRedis | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        primaries: dict[Address, FastRedis] = {}
        for start, end, primary, *_replicas in reply:
            host = primary[0].decode() if primary[0] else default_host
            address = (host, int(primary[1]))
            node = primaries[address] = self._node(address)
            slots[int(start) : int(end) + 1] = [node] * (int(end) - int(start) + 1)
        self._slots, self._primaries, self._stale = slots, list(primaries.values()), False

    def _route(self, command: Command) -> FastRedis:
        key = command_key(command)
        if key is None:
            return self._primaries[0] if self._primaries else self._node(self._seed)
        node = self._slots[slot_of(key)]
        if node is None:
            raise ResponseError(f"CLUSTERDOWN slot {slot_of(key)} is not served by any node")
        return node

    async def execute(self, *command: Any) -> Any:
        """Run one command; a Redis error reply is raised."""
        if command[0] == "SCRIPT":
            return await self._everywhere(command)
        [reply] = await self.execute_many([command])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _everywhere(self, command: Command) -> Any:
        """Run a server command on every primary (scripts must be loaded where their keys live)."""
        if self._stale:
            await self.refresh()
        replies = [await node.execute(*command) for node in self._primaries]
        return replies[0]

    async def execute_many(self, commands: list[Command], *, durable: bool = False) -> list[Any]:
        """Send each command to its node, every node's share in one write; replies (errors included,
        not raised) in order. ``durable``: each node's share ends with that node's WAIT."""
        if self._stale:
            await self.refresh()
        groups: dict[FastRedis, list[int]] = {}
        for index, command in enumerate(commands):
            groups.setdefault(self._route(command), []).append(index)
        replies: list[Any] = [None] * len(commands)
        try:
            if len(groups) == 1:
                [node] = groups
                replies = await node.execute_many(commands, durable=durable)
            else:
                queued: list[tuple[FastRedis, list[int], list[asyncio.Future[Any]], asyncio.Future[Any] | None]] = []
                for node, indexes in groups.items():
                    connection = await node.connection()
                    share = [commands[i] for i in indexes]
                    if durable and node.wait.replicas:
                        queued.append((node, indexes, *node.submit_durable(share, connection)))
                    else:
                        queued.append((node, indexes, FastRedis.submit(share, connection), None))
                for node, indexes, futures, waited in queued:
                    for index, future in zip(indexes, futures, strict=True):
                        replies[index] = await future
                    if durable and node.wait.replicas:
                        await node.check_wait(waited)
        except (RedisConnectionError, RedisTimeoutError):
            self._stale = True  # a primary may have failed over: read the map before the next batch
            raise
        for index, reply in enumerate(replies):
            if isinstance(reply, ResponseError) and str(reply).startswith(("MOVED ", "ASK ")):
                replies[index] = await self._redirected(commands[index], str(reply), durable=durable)
        return replies

    async def _redirected(self, command: Command, redirection: str, *, durable: bool = False) -> Any:
        """Send a command once more, where the cluster said its slot now is."""
        kind, _slot, where = redirection.split(" ", 2)
        host, _, port = where.rpartition(":")
        node = self._node((host or self._seed[0], int(port)))
        if kind == "ASK":
            _asking, reply = await node.execute_many([("ASKING",), command], durable=durable)
            return reply
        [reply] = await node.execute_many([command], durable=durable)
        self._stale = True  # the slot moved for good: read the map again before the next batch
        return reply

    def send_soon(self, commands: list[Command], *, durable: bool = False) -> Sent:
        """``execute_many``, started now as a task (a batch may be redirected, which needs awaiting)."""
        return Sent.of_task(self.execute_many(commands, durable=durable))

    def pipeline(self) -> FastPipeline:
        return FastPipeline(self)

    async def close(self) -> None:
        for node in self._nodes.values():
            await node.close()
