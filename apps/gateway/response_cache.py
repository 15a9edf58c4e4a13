"""The response cache as the data plane reads and writes it: a process-wide resource of the ``Runtime``.

Exact entries are one Redis GET; semantic lookups embed the prompt off the event
loop and ask pgvector (``apps.cache.lookup``) for the nearest prompt of the same
project, namespace and fingerprint. Stores and hits are queued in the request's
ledger round trip, and the cache stream indexes them in Postgres.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from apps.cache.guard import agree
from apps.cache.lookup import Nearest, configure_lookup_connection, lookup_vector, nearest_entry
from apps.core import names
from apps.core.events import BODY_FIELD, EVENT_FIELD, cache_event_clean
from apps.core.snapshot import CachePolicyView
from apps.enforcement.fastredis import FastPipeline
from apps.enforcement.redis_clients import FastClient


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """What the cache needs to know about one chat request."""

    project_id: int
    namespace: str
    policy: CachePolicyView
    exact_key: str
    fingerprint: str
    text: str  # what is embedded for a semantic lookup (and shown when inspecting entries)
    read: bool  # False with Cache-Control: no-cache / no-store
    write: bool  # False with Cache-Control: no-store


@dataclass(frozen=True, slots=True)
class CacheHit:
    kind: str  # "exact" | "semantic"
    body: dict[str, Any]  # a chat.completion as the provider returned it
    similarity: float | None
    entry_key: str  # exact key of the stored entry that answered (differs from the request's on semantic hits)


class ResponseCache:
    def __init__(self, redis_client: FastClient, database_url: str, prefix: str) -> None:
        self._redis = redis_client
        self._database_url = database_url
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._prefix = prefix
        self.stream = names.cache_stream(self._prefix)

    def redis_key(self, request: CacheRequest) -> str:
        return names.cache_entry(
            self._prefix, project_id=request.project_id, namespace=request.namespace, exact_key=request.exact_key
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def lookup(self, request: CacheRequest) -> CacheHit | None:
        if not request.read:
            return None
        if request.policy.exact:
            raw = await self._redis.execute("GET", self.redis_key(request))
            if raw is not None:
                return CacheHit("exact", orjson.loads(raw), None, request.exact_key)
        if request.policy.semantic:
            return await self._semantic_lookup(request)
        return None

    async def _semantic_lookup(self, request: CacheRequest) -> CacheHit | None:
        row = await self.nearest(request)
        # Similar is not enough: the prompts must also agree on numbers and names (apps/cache/guard.py).
        if (
            row is None
            or row.similarity < request.policy.threshold
            or not agree(request.text, row.prompt_text, request.policy.learned_opposites)
        ):
            return None
        return CacheHit("semantic", row.response, row.similarity, row.exact_key)

    async def nearest(self, request: CacheRequest, *, other: bool = False) -> Nearest | None:
        """The nearest stored prompt of the request's project, namespace and fingerprint (``other``: not the
        request's own prompt), or None when there is none or the prompt is too long to embed."""
        loop = asyncio.get_running_loop()
        vector = await loop.run_in_executor(None, lookup_vector, request.text)
        if vector is None:
            return None
        pool = await self._database_pool()
        async with pool.connection() as conn:
            return await nearest_entry(
                conn,
                vector=vector,
                project_id=request.project_id,
                namespace=request.namespace,
                fingerprint=request.fingerprint,
                exclude=request.exact_key if other else None,
            )

    async def _database_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is None:
                from psycopg_pool import AsyncConnectionPool

                pool = AsyncConnectionPool(
                    self._database_url, min_size=1, max_size=4, open=False, configure=configure_lookup_connection
                )
                await pool.open()
                self._pool = pool
        return self._pool

    def queue_store(self, pipe: Any, request: CacheRequest, *, body: dict[str, Any], model: str, cost: str) -> None:
        """Queue (in the ledger's pipeline) the exact entry and the event that indexes it in Postgres.

        An answer with a NUL character is not cached: Postgres could not index it (jsonb refuses it).
        """
        encoded = orjson.dumps(body)
        if b"\\u0000" in encoded:
            return
        if request.policy.exact:
            pipe.set(self.redis_key(request), encoded, ex=request.policy.ttl_seconds)
        event = {
            "type": "store",
            "project_id": request.project_id,
            "namespace": request.namespace,
            "exact_key": request.exact_key,
            "fingerprint": request.fingerprint,
            "model": model,
            "text": request.text,
            "semantic": request.policy.indexes,
            "ttl": request.policy.ttl_seconds,
            "cost": cost,
            "at": time.time(),
        }
        pipe.xadd(self.stream, {EVENT_FIELD: orjson.dumps(cache_event_clean(event)), BODY_FIELD: encoded})

    def queue_hit(self, pipe: FastPipeline, request: CacheRequest, hit: CacheHit) -> None:
        event = {"type": "hit", "project_id": request.project_id, "namespace": request.namespace,
                 "exact_key": hit.entry_key, "kind": hit.kind, "at": time.time()}  # fmt: skip
        pipe.xadd(self.stream, {EVENT_FIELD: orjson.dumps(cache_event_clean(event))})
