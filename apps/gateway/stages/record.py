"""Record: the ledger event, the reservation's settle and the cache's work, in one Redis round trip."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from apps.core.errors import GatewayError
from apps.gateway import tracing
from apps.gateway.asgi import Send, send_error
from apps.gateway.call import Call
from apps.gateway.response_cache import CacheHit
from apps.gateway.runtime import Runtime
from apps.gateway.stages.relay import send_answer
from apps.gateway.stages.upstream import Answer, answer_headers, upstream_error_code


async def record(
    rt: Runtime, call: Call, *, cache_store: dict[str, Any] | None = None, cache_hit: CacheHit | None = None
) -> None:
    """Append the request's ledger event; settle what it reserved to what it cost (its side calls
    included) and queue the answer for the cache (``cache_store``) or count a hit, in the same write.
    The request's metrics and trace span are recorded here too, once."""
    await record_soon(rt, call, cache_store=cache_store, cache_hit=cache_hit)


def record_soon(
    rt: Runtime, call: Call, *, cache_store: dict[str, Any] | None = None, cache_hit: CacheHit | None = None
) -> Awaitable[None]:
    """``record``, done now up to its Redis round trip, which is on its way when this returns; await the
    result for the round trip's end (the event on the stream, or spooled)."""
    if cache_hit is not None and cache_hit.kind == "semantic":
        call.embedding_key = cache_hit.entry_key
    elif cache_store is not None and call.cache is not None and call.cache.policy.indexes:
        call.embedding_key = call.cache.exact_key
    project = rt.snapshot.projects.get(call.key.project_id)
    slug = project.slug if project is not None else ""
    if cache_hit is not None:
        cache_result: str | None = cache_hit.kind
    else:
        cache_result = "miss" if call.cache is not None and call.cache.read else None
    rt.metrics.request(call, slug, cache_result=cache_result)
    if call.span is not None:
        tracing.end_request(call, slug)
    admission, call.admission = call.admission, None
    reserved = admission is not None and admission.reserved
    if not reserved and cache_store is None and cache_hit is None:
        return rt.ledger.write_soon(call.event())
    pipeline = rt.fast_redis.pipeline()
    if reserved:
        assert admission is not None
        pipeline.commands = rt.limiter.settle_commands(
            admission,
            actual_usd=call.cost + call.side_cost,
            actual_tokens=call.prompt_tokens + call.completion_tokens,
        )
    if call.cache is not None and cache_store is not None:
        rt.cache.queue_store(pipeline, call.cache, body=cache_store, model=call.served_model, cost=str(call.cost))
    if call.cache is not None and cache_hit is not None:
        rt.cache.queue_hit(pipeline, call.cache, cache_hit)
    return rt.ledger.write_soon(call.event(), pipeline=pipeline)


async def while_sending(
    reply: Awaitable[None],
    rt: Runtime,
    call: Call,
    *,
    cache_store: dict[str, Any] | None = None,
    cache_hit: CacheHit | None = None,
) -> None:
    """Send ``reply`` to the app while the request is recorded; return once both are done.

    The record's round trip (the ledger event, the settle, the cache's work) is on its way to Redis before
    the reply is sent, so an app that reads slowly never holds it up, and what comes back is handled when
    it comes (a refused event is spooled then). Only this coroutine's end waits for both. No task: the
    task a request that ran the record beside the send cost ~7-18k instructions a request (callgrind, the
    commit before against this one). If the send fails (the app went away) the record is still finished first.

    Not ``try/finally``: compiled with mypyc (costcontrol/compiled.py), an ``await`` in a ``finally`` re-raised
    the exception its caller was handling (a refusal's GatewayError, after its error had been sent).
    """
    recording = record_soon(rt, call, cache_store=cache_store, cache_hit=cache_hit)
    try:
        await reply
    except BaseException:
        await recording
        raise
    await recording


async def refused(rt: Runtime, send: Send, call: Call, exc: GatewayError) -> None:
    """A stage refused the request: the app gets the error while its ledger row is written."""
    call.status_code, call.error_code = exc.status, exc.code or exc.type
    await while_sending(send_error(send, exc, call.request_id), rt, call)


async def provider_error(rt: Runtime, send: Send, call: Call, answer: Answer) -> None:
    """The provider's error, passed through to the app as it came while the request is recorded."""
    call.status_code, call.error_code = answer.status, upstream_error_code(answer.body)
    await while_sending(send_answer(send, answer.status, answer.body, answer_headers(call, answer)), rt, call)


async def failed(rt: Runtime, call: Call) -> None:
    """The gateway itself failed: the row says so (the caller re-raises for the app's 500)."""
    call.status_code, call.error_code = 500, "gateway_error"
    await record(rt, call)
