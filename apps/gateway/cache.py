"""The response cache as the data plane sees it: look up before forwarding, store after.

Exact hits are one Redis GET. Semantic lookups embed the prompt (local MiniLM,
off the event loop) and ask pgvector for the nearest stored prompt of the same
project, namespace and compatibility fingerprint; that is the one place the
data plane reads Postgres, and only for projects that turned semantic caching
on. Stores go to Redis at once (so the next identical request hits) and, via
the cache stream, to Postgres, where a worker embeds and indexes them.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from apps.cache.guard import agree
from apps.core import names
from apps.core.events import BODY_FIELD, EVENT_FIELD, cache_event_clean
from apps.core.patterns import SCAN_CHARS, Pattern
from apps.core.text import last_user_text
from apps.enforcement.fastredis import FastPipeline, FastRedis


@dataclass(frozen=True, slots=True)
class CachePolicyView:
    exact: bool
    semantic: bool
    threshold: float
    ttl_seconds: int
    deny_prefixes: tuple[str, ...]  # lower-cased
    deny_regexes: tuple[Pattern, ...]  # RE2, case-insensitive, search the first SCAN_CHARS characters
    share_across_users: bool = False  # off: an answer is served only to the end user it was stored for

    def denies(self, text: str) -> bool:
        lowered = text.lstrip()[:SCAN_CHARS].lower()
        return any(lowered.startswith(p) for p in self.deny_prefixes) or any(r.search(text) for r in self.deny_regexes)


def policy_view(
    *, exact: bool, semantic: bool, threshold: float, ttl: int, patterns: list[str], share_across_users: bool = False
) -> CachePolicyView:
    """The policy as the gateway reads it; ``PatternError`` if a ``re:`` pattern is not valid RE2."""
    return CachePolicyView(
        exact=exact,
        semantic=semantic,
        threshold=threshold,
        ttl_seconds=ttl,
        deny_prefixes=tuple(p.lower() for p in patterns if not p.startswith("re:")),
        deny_regexes=tuple(Pattern(p[3:], ignore_case=True) for p in patterns if p.startswith("re:")),
        share_across_users=share_across_users,
    )


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
    from apps.cache.keys import compatibility_fingerprint, exact_key, semantic_text

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


def lookup_vector(text: str) -> np.ndarray | None:
    """The embedding a semantic lookup searches with, or None when ``text`` is too long for one.

    Blocking (the model runs here, ~3 ms for a short question): call it off the event loop.
    Text longer than the embedder's 256-token window would be embedded without its end, so
    two long prompts that differ only there would score 1.0; such prompts get exact caching
    only, and the ingest worker does not index them either (see cache_ingest_batch).
    """
    from apps.cache.embedding import local_embedder

    embedder = local_embedder()
    return embedder.embed([text])[0] if embedder.fits(text) else None


# Always filtered by tenant, namespace and fingerprint. The HNSW index is shared by every
# project, so the search must not stop at the first ef_search neighbours when they all belong
# to other projects: hnsw.iterative_scan (set per connection below) keeps scanning until a
# row passes the filter (or hnsw.max_scan_tuples is spent, a miss).
NEAREST_SQL = (
    "SELECT response, 1 - (embedding <=> %(vector)s) AS similarity, exact_key, prompt_text FROM llmcache_cacheentry "
    "WHERE project_id = %(project)s AND namespace = %(namespace)s AND fingerprint = %(fingerprint)s "
    "AND expires_at > now() AND embedding IS NOT NULL ORDER BY embedding <=> %(vector)s LIMIT 1"
)


async def configure_lookup_connection(conn: Any) -> None:
    """Binary vectors (no 384-number text literal each way), iterative HNSW scans, autocommit
    (one statement per lookup: no BEGIN, and no ROLLBACK when the pool takes it back), and a plan
    per project: psycopg prepares the statement after a few runs, and Postgres' generic plan for
    it then takes the HNSW index for every project; for a project with a few hundred entries in
    an index of 100k, that walks the graph past other tenants' rows (~50 ms) where the btree on
    (project, namespace, fingerprint) and an exact sort take under 1 ms (bench_cache shows both)."""
    from pgvector.psycopg import register_vector_async

    await conn.set_autocommit(True)
    await register_vector_async(conn)
    await conn.execute("SET hnsw.iterative_scan = strict_order")
    await conn.execute("SET plan_cache_mode = force_custom_plan")


@dataclass(frozen=True, slots=True)
class Nearest:
    response: dict[str, Any]
    similarity: float
    exact_key: str
    prompt_text: str


async def nearest_entry(
    conn: Any, *, vector: np.ndarray, project_id: int, namespace: str, fingerprint: str
) -> Nearest | None:
    """The closest live entry of this project, namespace and fingerprint."""
    params = {"vector": vector, "project": project_id, "namespace": namespace, "fingerprint": fingerprint}
    row = await (await conn.execute(NEAREST_SQL, params)).fetchone()
    return None if row is None else Nearest(row[0], float(row[1]), row[2], row[3])


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


def sse_from_completion(body: dict[str, Any], *, include_usage: bool, request_id: str) -> list[bytes]:
    """A stored chat.completion replayed as the stream a provider would have sent."""
    base = {
        "id": body.get("id", request_id),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": body.get("system_fingerprint"),
    }
    extra = {"usage": None} if include_usage else {}
    events = []
    for choice in body.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        events.append({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}], **extra})  # fmt: skip
        content = message.get("content") or ""
        # Word-sized pieces, like a provider's token stream (whitespace kept, so the text joins back exactly).
        for piece in re.findall(r"\S+\s*|\s+", content):
            events.append({**base, "choices": [{"index": index, "delta": {"content": piece},
                                                "finish_reason": None}], **extra})  # fmt: skip
        if message.get("tool_calls"):
            events.append({**base, "choices": [{"index": index, "delta": {"tool_calls": message["tool_calls"]},
                                                "finish_reason": None}], **extra})  # fmt: skip
        events.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason")}], **extra})  # fmt: skip
    if include_usage and body.get("usage"):
        events.append({**base, "choices": [], "usage": body["usage"]})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


class StreamRecorder:
    """Rebuilds a chat.completion from stream chunks, so a finished stream can be cached."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.finish_reason: str | None = None
        self.meta: dict[str, Any] = {}
        self.cacheable = True

    def add(self, chunk: dict[str, Any]) -> None:
        if not self.meta:
            self.meta = {k: chunk.get(k) for k in ("id", "model", "created", "system_fingerprint")}
        choices = chunk.get("choices")
        if choices is not None and not isinstance(choices, list):
            self.cacheable = False  # a malformed stream is never cached
            return
        for choice in choices or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                self.cacheable = False
                continue
            if choice.get("index", 0) != 0:
                self.cacheable = False  # n > 1 streams are not cached
                continue
            if delta.get("tool_calls") or delta.get("function_call"):
                self.cacheable = False  # tool-call deltas are fragments; not reassembled here
            content = delta.get("content")
            if isinstance(content, str):
                self.content.append(content)
            elif content is not None:
                self.cacheable = False
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str):
                self.finish_reason = finish_reason

    def completion(self, usage: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self.cacheable or self.finish_reason not in ("stop", "length"):
            return None
        return {
            **self.meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.content), "refusal": None},
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],  # fmt: skip
            "usage": usage,
        }
