"""The Redis clients for a ``REDIS_URL``: one server, or a Redis Cluster.

``redis://host:port/db`` names one server. ``redis+cluster://host:port`` names a
Redis Cluster by one of its nodes (the seed; the client learns the others from
it): every client opened here then routes each command by its key's slot. The
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
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from apps.enforcement.fastcluster import FastRedisCluster
from apps.enforcement.fastredis import FastRedis

CLUSTER_SCHEME = "redis+cluster"

# The data plane's lean client, for one server or a cluster.
FastClient = FastRedis | FastRedisCluster


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def node_url(url: str) -> str:
    """The ``redis://`` URL of the node a cluster URL names (the URL itself for one server)."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return url
    return urlunsplit(("redis", parts.netloc, "", parts.query, ""))


def sync_client(url: str, **options: Any) -> redis.Redis:
    """redis-py's client for ``url`` (``RedisCluster`` offers the same commands as ``Redis``)."""
    if is_cluster(url):
        return cast(redis.Redis, RedisCluster.from_url(node_url(url), **options))
    return redis.Redis.from_url(url, **options)


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """redis-py's asyncio client for ``url``."""
    if is_cluster(url):
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(node_url(url), **options))
    return aioredis.Redis.from_url(url, **options)


def fast_client(url: str, *, connect_timeout: float = 2.0, command_timeout: float | None = None) -> FastClient:
    """The data plane's lean client for ``url``."""
    if is_cluster(url):
        return FastRedisCluster(node_url(url), connect_timeout=connect_timeout, command_timeout=command_timeout)
    return FastRedis(url, connect_timeout=connect_timeout, command_timeout=command_timeout)
