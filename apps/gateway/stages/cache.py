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

import dataclasses
import logging
import time
from typing import Any

from apps.cache.keys import compatibility_fingerprint, exact_key, semantic_text, static_prefix
from apps.core import route
from apps.core.events import clean_count, clean_optional_count
from apps.core.snapshot import CachePolicyView, Snapshot
from apps.core.text import last_user_text
from apps.gateway.call import ZERO, Call
from apps.gateway.response_cache import CacheHit, CacheRequest, ResponseCache
from apps.gateway.stages.plan import Target

logger = logging.getLogger(__name__)


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
    messages = payload.get("messages")  # None for the Responses API: its input is keyed whole, never embedded
    if policy.denies(last_user_text(payload)):
        return None
    scope = "" if policy.share_across_users else end_user
    return CacheRequest(
        project_id=project_id,
        namespace=namespace[:100],
        policy=policy,
        exact_key=exact_key(payload, end_user=scope),
        fingerprint=compatibility_fingerprint(payload, end_user=scope),
        text=semantic_text(messages) if messages is not None else last_user_text(payload),
        read="no-cache" not in directives and "no-store" not in directives,
        write="no-store" not in directives,
    )


def plan_cache(
    snapshot: Snapshot, call: Call, payload: dict[str, Any], headers: dict[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
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
    if not policy.serves:
        # Only a semantic-cache trial asked for this plan: answers get indexed, the app sees no cache.
        if call.cache is not None:
            call.cache = dataclasses.replace(call.cache, read=False)
        return []
    return [(b"x-cache", b"miss" if call.cache is not None and call.cache.read else b"bypass")]


def note_replay(call: Call, payload: dict[str, Any]) -> None:
    """Note on ``call`` what replaying the ledger needs (``apps/opportunities``): the request's exact-cache
    key, shared across end users as a policy that shares answers would key it (the ledger has the end user
    beside it), its static prefix, the output cap it asked for and its number of messages. Digests and
    counts only: no prompt text reaches the ledger."""
    request = call.cache
    call.cache_key = request.exact_key if request is not None and not call.end_user else exact_key(payload)
    call.prefix_key, call.prefix_tokens = static_prefix(payload)
    cap = payload.get("max_completion_tokens")
    call.max_tokens = clean_optional_count(cap if cap is not None else payload.get("max_tokens"))
    call.turns = len(payload["messages"])


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
    # What pruning trimmed still shaped the request (and its cache key): the note stays.
    call.decision = route.RouteDecision(kind=route.CACHE, cache_hit=hit.kind, pruned=call.decision.pruned)
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
