"""Django's Redis cache on a Redis Cluster (``REDIS_URL=redis+cluster://…``).

DRF's per-user API throttle and the per-address count of wrong API tokens keep
their counters in Django's cache, and must count across every process, so on a
cluster the cache stays in Redis: Django's own Redis cache, with redis-py's
``RedisCluster`` as its client (one per process, routing each key to its slot).
The throttles use single-key commands only, which a cluster serves as one
server would.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from apps.enforcement.redis_clients import sync_client


class RedisClusterCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._url = servers[0]
        self._cluster: Any = None

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        if self._cluster is None:
            self._cluster = sync_client(self._url)
        return self._cluster


class RedisClusterCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        # One URL, whole: Django would split a string LOCATION at its commas, which separate a cluster
        # URL's seed nodes (``redis+cluster://h1:p1,h2:p2``).
        super().__init__([server], params)
        self._class = RedisClusterCacheClient
