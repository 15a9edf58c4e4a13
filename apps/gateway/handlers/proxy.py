"""POST /v1/chat/completions, /v1/completions and /v1/embeddings: one pipeline, read top to bottom.

authenticate -> validate -> prune -> plan route -> cache -> admit -> (cascade) -> call upstream
-> relay (JSON or SSE) -> price -> record -> shadow. Every request that gets past
authentication is recorded, whatever stage refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from apps.core.errors import GatewayError
from apps.core.request import ENDPOINT_CHAT
from apps.core.text import answer_text
from apps.gateway import tracing
from apps.gateway.asgi import Receive, Scope, Send
from apps.gateway.call import Call
from apps.gateway.runtime import Runtime
from apps.gateway.stages import cache, cascade, price, prune, record, relay, shadow, trial, upstream
from apps.gateway.stages.admit import admit
from apps.gateway.stages.auth import authenticate
from apps.gateway.stages.plan import Plan, plan_route
from apps.gateway.stages.validate import attribute, read_request


async def handle(rt: Runtime, scope: Scope, receive: Receive, send: Send, endpoint: str, request_id: str) -> None:
    headers = dict(scope["headers"])
    call = start_call(rt, headers, endpoint, request_id, headers.get(b"authorization"))
    await run(rt, send, receive, call, headers, read_request(call, receive, headers, rt.limits.max_body_bytes))


def start_call(
    rt: Runtime, headers: dict[bytes, bytes], endpoint: str, request_id: str, authorization: bytes | None
) -> Call:
    """The request's ``Call``, once its key is authenticated (the 401 is raised here, and not recorded)."""
    key = authenticate(rt.snapshot, authorization)
    call = Call(request_id=request_id, endpoint=endpoint, started=time.perf_counter(), created_at=time.time(), key=key)
    attribute(call, headers)
    call.traceparent = tracing.app_traceparent(headers.get(b"traceparent"))
    tracing.start_request(call)
    return call


async def run(
    rt: Runtime,
    send: Send,
    receive: Receive,
    call: Call,
    headers: dict[bytes, bytes],
    read: Awaitable[dict[str, Any]],
) -> None:
    """The pipeline after authentication: ``read`` gives the checked chat-shaped payload; every outcome is recorded."""
    snapshot = rt.snapshot
    endpoint = call.endpoint
    try:
        payload = await read
        prune.prune(snapshot, call, payload)
        plan = plan_route(snapshot, call, payload, rt.in_flight)
        target = plan.targets[0]
        payload["model"] = target.model
        call.served_model, call.provider_id = target.model, target.provider.id
        if endpoint == ENDPOINT_CHAT:
            call.extra_headers = cache.plan_cache(snapshot, call, payload, headers)
            cache.note_replay(call, payload)
            if call.cache is not None:
                with tracing.child(call, "cache lookup"):
                    hit = await cache.look_up(rt.cache, call.cache)
                if hit is not None:
                    body = cache.hit_answer(call, hit, target)
                    await relay.send_completion(send, call, payload, body, cache.hit_headers(call, hit))
                    await record.record(rt, call, cache_hit=hit)
                    return
        with tracing.child(call, "admission"):
            call.admission = await admit(rt, snapshot, call, plan, payload, estimated=True)
        call.extra_headers = [*call.admission.headers, *call.extra_headers]
        if plan.cheap is not None and await cascade.cascade(rt, send, call, plan, payload):
            return
        if call.streamed:
            await _stream(rt, send, receive, call, plan, payload)
        else:
            await _answer(rt, send, call, plan, payload)
    except GatewayError as exc:
        await record.refused(rt, send, call, exc)
    except Exception:
        await record.failed(rt, call)
        raise


async def _answer(rt: Runtime, send: Send, call: Call, plan: Plan, payload: dict[str, Any]) -> None:
    """A whole answer: call upstream, price it, relay it while recording it."""
    answer = await upstream.call_upstream(rt, call, plan.targets, payload, stream=False)
    call.served_model, call.provider_id = answer.target.model, answer.target.provider.id
    call.ttft_ms = call.elapsed_ms()
    call.status_code = answer.status
    store, text = None, ""
    if answer.status >= 400:
        call.error_code = upstream.upstream_error_code(answer.body)
    else:
        data = relay.answer_object(answer.body)
        price.price_answer(call, answer.target, data)
        if call.cache is not None and call.cache.write and price.cacheable(data):
            store = data
        if plan.shadow is not None or plan.cheap is not None or trial.measuring(call):
            text = answer_text(data)
    headers = upstream.answer_headers(call, answer)
    await record.while_sending(
        relay.send_answer(send, answer.status, answer.body, headers), rt, call, cache_store=store
    )
    await _after(rt, call, plan, payload, text)


async def _stream(rt: Runtime, send: Send, receive: Receive, call: Call, plan: Plan, payload: dict[str, Any]) -> None:
    """A stream: call upstream asking for its usage chunk, relay it event by event, price it, record it."""
    stream_options = payload.get("stream_options") or {}
    wants_usage = bool(stream_options.get("include_usage"))
    # Always ask for the usage chunk: it is how streams get billed exactly.
    payload["stream_options"] = {**stream_options, "include_usage": True}
    answer = await upstream.call_upstream(rt, call, plan.targets, payload, stream=True)
    call.served_model, call.provider_id = answer.target.model, answer.target.provider.id
    if answer.response is None:  # the provider's error, passed through
        await record.provider_error(rt, send, call, answer)
        return
    relaying = time.perf_counter()
    sse = await relay.relay_stream(
        send, receive, call, answer.response, strip_usage_chunk=not wants_usage,
        max_event_bytes=rt.limits.max_sse_event_bytes, translate=answer.translate,
    )  # fmt: skip
    call.upstream_s += time.perf_counter() - relaying  # the stream's time is the provider's
    price.price_stream(call, answer.target, sse)
    store, completion = None, None
    if call.status_code == 200 and sse.done:
        if call.cache is not None and call.cache.write or plan.shadow is not None or plan.cheap is not None:
            completion = sse.completion()
        if completion is not None and call.cache is not None and call.cache.write and price.cacheable(completion):
            store = completion
    await record.while_sending(
        send({"type": "http.response.body", "body": sse.flush(), "more_body": False}), rt, call, cache_store=store
    )
    await _after(rt, call, plan, payload, answer_text(completion) if completion else "")


async def _after(rt: Runtime, call: Call, plan: Plan, payload: dict[str, Any], text: str) -> None:
    """Once the app has its answer: queue the shadow copy and the trial's comparison and, after an
    escalation, learn the label."""
    if call.status_code != 200:
        return
    shadow.offer(rt, call, plan, payload, text)
    trial.offer(rt, call, text)
    if text:
        await cascade.learn_label(rt, plan, text)
