"""The Redis clients for a ``REDIS_URL``: one server, or a Redis Cluster.

``redis://host:port/db`` names one server. ``redis+cluster://host:port`` names a
Redis Cluster by one of its nodes (the seed; the client learns the others from
it): every client opened here then routes each command by its key's slot. Name
several seeds (``redis+cluster://h1:6379,h2:6379,h3:6379``) so that a process
starting while one of them is down still finds the cluster. The
data plane's lean client is ``FastRedis`` or ``FastRedisCluster``; everything
else uses redis-py's ``Redis`` or ``RedisCluster`` (both sync and asyncio).
Pub/sub needs nothing special: a cluster delivers a PUBLISH to subscribers on
every node.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

from apps.enforcement.fastcluster import FastRedisCluster
from apps.enforcement.fastredis import NO_WAIT, FastRedis, ReplicaWait

CLUSTER_SCHEME = "redis+cluster"

# The data plane's lean client, for one server or a cluster.
FastClient = FastRedis | FastRedisCluster


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every node a cluster URL names, in order; ValueError for one that is not an address."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Redis Cluster URL names nodes as host:port, got {item.strip()!r}")
        seeds.append((host, int(port)))
    return seeds


def node_url(url: str) -> str:
    """The ``redis://`` URL of the (first) node a cluster URL names (the URL itself for one server)."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return url
    userinfo = parts.netloc.rpartition("@")[0]
    host, port = cluster_seeds(url)[0]
    return urlunsplit(("redis", f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}", "", parts.query, ""))


def sync_client(url: str, **options: Any) -> redis.Redis:
    """redis-py's client for ``url`` (``RedisCluster`` offers the same commands as ``Redis``)."""
    if is_cluster(url):
        others = [ClusterNode(host, port) for host, port in cluster_seeds(url)[1:]]
        return cast(redis.Redis, RedisCluster.from_url(node_url(url), startup_nodes=others, **options))
    return redis.Redis.from_url(url, **options)


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """redis-py's asyncio client for ``url``."""
    if is_cluster(url):
        others = [AsyncClusterNode(host, port) for host, port in cluster_seeds(url)[1:]]
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(node_url(url), startup_nodes=others, **options))
    return aioredis.Redis.from_url(url, **options)


def fast_client(
    url: str,
    *,
    connect_timeout: float = 2.0,
    command_timeout: float | None = None,
    wait: ReplicaWait = NO_WAIT,
) -> FastClient:
    """The data plane's lean client for ``url``; ``wait``: the WAIT that ends its durable batches."""
    if is_cluster(url):
        return FastRedisCluster(
            node_url(url), seeds=cluster_seeds(url), connect_timeout=connect_timeout, command_timeout=command_timeout,
            wait=wait,
        )  # fmt: skip
    return FastRedis(url, connect_timeout=connect_timeout, command_timeout=command_timeout, wait=wait)
