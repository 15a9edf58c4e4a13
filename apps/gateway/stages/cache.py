"""Cache: answer from the response cache when the project's policy allows, and store what is safe.

Exact hits are one Redis GET. Semantic lookups embed the prompt (local MiniLM,
off the event loop) and ask pgvector for the nearest stored prompt of the same
project, namespace and compatibility fingerprint (``apps.cache.lookup``); that
is the one place the data plane reads Postgres, and only for projects that
turned semantic caching on. Stores go to Redis at once (so the next identical
request hits) and, via the cache stream, to Postgres, where a worker embeds and
indexes them. A cache that fails is a miss, never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from apps.cache.guard import agree
from apps.cache.keys import compatibility_fingerprint, exact_key, semantic_text
from apps.cache.lookup import configure_lookup_connection, lookup_vector, nearest_entry
from apps.core import names, route
from apps.core.events import BODY_FIELD, EVENT_FIELD, cache_event_clean, clean_count
from apps.core.snapshot import CachePolicyView, Snapshot
from apps.core.text import last_user_text
from apps.enforcement.fastredis import FastPipeline, FastRedis
from apps.gateway.call import ZERO, Call
from apps.gateway.stages.plan import Target

logger = logging.getLogger(__name__)


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


def cache_request(
    *,
    project_id: int,
    policy: CachePolicyView,
    payload: dict[str, Any],
    cache_control: str,
    namespace: str,
    end_user: str = "",
) -> CacheRequest | None:
    """The cache plan for this request, or None when it bypasses the cache entirely.

    Unless the policy shares answers across end users, the end user (``X-End-User`` or ``user``)
    is part of the exact key and the fingerprint: one end user's answer is never served to another.
    Requests that name no end user share with each other (there is nothing to tell them apart).
    """
    directives = {d.strip().lower() for d in cache_control.split(",")} if cache_control else set()
    if "no-store" in directives and "no-cache" in directives:
        return None
    messages = payload["messages"]
    if policy.denies(last_user_text(payload)):
        return None
    scope = "" if policy.share_across_users else end_user
    return CacheRequest(
        project_id=project_id,
        namespace=namespace[:100],
        policy=policy,
        exact_key=exact_key(payload, end_user=scope),
        fingerprint=compatibility_fingerprint(payload, end_user=scope),
        text=semantic_text(messages),
        read="no-cache" not in directives and "no-store" not in directives,
        write="no-store" not in directives,
    )


class ResponseCache:
    def __init__(self, redis_client: FastRedis, database_url: str, prefix: str) -> None:
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
        loop = asyncio.get_running_loop()
        vector = await loop.run_in_executor(None, lookup_vector, request.text)
        if vector is None:
            return None
        pool = await self._database_pool()
        async with pool.connection() as conn:
            row = await nearest_entry(
                conn,
                vector=vector,
                project_id=request.project_id,
                namespace=request.namespace,
                fingerprint=request.fingerprint,
            )
        # Similar is not enough: the prompts must also agree on numbers and names (apps/cache/guard.py).
        if row is None or row.similarity < request.policy.threshold or not agree(request.text, row.prompt_text):
            return None
        return CacheHit("semantic", row.response, row.similarity, row.exact_key)

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
            "semantic": request.policy.semantic,
            "ttl": request.policy.ttl_seconds,
            "cost": cost,
            "at": time.time(),
        }
        pipe.xadd(self.stream, {EVENT_FIELD: orjson.dumps(cache_event_clean(event)), BODY_FIELD: encoded})

    def queue_hit(self, pipe: FastPipeline, request: CacheRequest, hit: CacheHit) -> None:
        event = {"type": "hit", "project_id": request.project_id, "namespace": request.namespace,
                 "exact_key": hit.entry_key, "kind": hit.kind, "at": time.time()}  # fmt: skip
        pipe.xadd(self.stream, {EVENT_FIELD: orjson.dumps(cache_event_clean(event))})


# --- the stage ------------------------------------------------------------------------------------


def plan_cache(snapshot: Snapshot, call: Call, payload: dict[str, Any], headers: dict[bytes, bytes]) -> list[Any]:
    """Set ``call.cache`` (None: the cache is not asked) and return the ``X-Cache`` header an answer will carry."""
    policy = snapshot.cache_policy(call.key.project_id, call.feature)
    if policy is None:
        return []
    call.cache = cache_request(
        project_id=call.key.project_id,
        policy=policy,
        payload=payload,
        cache_control=headers.get(b"cache-control", b"").decode("latin-1"),
        namespace=headers.get(b"x-cache-namespace", b"").decode("utf-8", "replace"),
        end_user=call.end_user,
    )
    return [(b"x-cache", b"miss" if call.cache is not None and call.cache.read else b"bypass")]


async def look_up(cache: ResponseCache, request: CacheRequest) -> CacheHit | None:
    try:
        return await cache.lookup(request)
    except Exception:
        # A cache that cannot answer is a miss, never a failed request.
        logger.exception("cache lookup failed; forwarding")
        return None


def hit_answer(call: Call, hit: CacheHit, requested: Target) -> dict[str, Any]:
    """The stored answer as this request's (its own id and time), billed $0; the saving is what the
    requested model would have cost for the same tokens."""
    body = {**hit.body, "id": "chatcmpl-" + call.request_id[4:], "created": int(time.time())}
    usage = body.get("usage")
    if isinstance(usage, dict):
        call.prompt_tokens = clean_count(usage.get("prompt_tokens")) or call.prompt_tokens
        call.completion_tokens = clean_count(usage.get("completion_tokens"))
    call.cost = ZERO
    if requested.counterfactual_price is not None:
        call.counterfactual_cost = requested.counterfactual_price.cost(
            prompt_tokens=call.prompt_tokens, cached_tokens=0, completion_tokens=call.completion_tokens
        )
    # The cache answered, not the rule's model: the rule's figures stay about routing.
    call.decision = route.RouteDecision(kind=route.CACHE, cache_hit=hit.kind)
    call.provider_id = None
    call.served_model = str(body.get("model") or requested.model)
    call.ttft_ms = call.elapsed_ms()
    return body


def hit_headers(call: Call, hit: CacheHit) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-request-id", call.request_id.encode()),
        call.route_header(),
        (b"x-cache", f"hit-{hit.kind}".encode()),
    ]
    if hit.similarity is not None:
        headers.append((b"x-cache-similarity", f"{hit.similarity:.4f}".encode()))
    return headers
