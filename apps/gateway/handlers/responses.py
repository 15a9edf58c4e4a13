"""The Responses API: POST /v1/responses on the chat pipeline's stages, and its stored responses.

Create reads top to bottom like chat: authenticate -> validate -> prune -> plan route ->
(exact cache) -> admit -> (cascade: ``stages.responses_cascade``) -> call upstream -> relay (JSON, or the typed event
stream event by event) -> price (usage from the response or ``response.completed``,
at the tier it was served at) -> record. Upstreams are asked in Responses' own
shape (OpenAI, vLLM and the simulator speak it). A ``previous_response_id`` must
be one of this project's responses: it pins the request to the provider that
holds the conversation, and the conversation's tokens so far count in the worst
case. Retrieve, delete, cancel and input items go to the provider that holds the
response, and are a 404 for any other project (``apps.gateway.conversations``).

A provider that speaks only Chat Completions gets the request translated (in the
upstream stage: ``apps.core.responses_chat``). Its conversations are held by us
(``apps.gateway.conversations``): a next turn brings the earlier items along and can
go to any Chat-only target of the route; retrieve, delete and input items are
answered from that state (``apps.gateway.handlers.responses_held``); ``background`` there
is a 400.

The exact cache answers only requests that keep no state (``store: false``, no
``previous_response_id``, not in the background, not streamed): a stored
response's id must be one its provider knows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import orjson

from apps.core import route
from apps.core.errors import GatewayError, method_not_allowed
from apps.core.request import ENDPOINT_RESPONSES
from apps.core.responses import is_response_id, output_text, usage_counts
from apps.core.responses_chat import held_state, held_store_event, input_items, stored_items
from apps.core.text import completion_estimate
from apps.core.upstream_http import BodyTooLarge
from apps.gateway import conversations, tracing
from apps.gateway.asgi import Receive, Scope, Send
from apps.gateway.call import ZERO, Call
from apps.gateway.conversations import Owner, not_found
from apps.gateway.handlers import responses_held
from apps.gateway.runtime import Runtime
from apps.gateway.stages import cache, cascade, price, prune, record, relay, responses_cascade, shadow, upstream
from apps.gateway.stages.admit import admit, worst_case
from apps.gateway.stages.auth import authenticate
from apps.gateway.stages.plan import Plan, plan_route
from apps.gateway.stages.responses_stream import ResponsesSse
from apps.gateway.stages.validate import attribute, read_request

# What each stored-response path may be asked with (the part after /v1/responses/{id}).
_RESOURCE_METHODS = {"": ("GET", "DELETE"), "cancel": ("POST",), "input_items": ("GET",)}


async def handle(rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
    path: str = scope["path"]
    method: str = scope["method"]
    if path == "/v1/responses":
        if method != "POST":
            raise method_not_allowed(method, f"on {path}")
        await create(rt, scope, receive, send, request_id)
        return
    response_id, _, action = path[len("/v1/responses/") :].partition("/")
    allowed = _RESOURCE_METHODS.get(action)
    if allowed is None:
        raise GatewayError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
    if method not in allowed:
        raise method_not_allowed(method, f"on {path}")
    await stored(rt, scope, send, request_id, response_id, action)


async def create(rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
    snapshot = rt.snapshot
    headers = dict(scope["headers"])
    key = authenticate(snapshot, headers.get(b"authorization"))
    call = Call(request_id, ENDPOINT_RESPONSES, started=time.perf_counter(), created_at=time.time(), key=key)
    attribute(call, headers)
    call.traceparent = tracing.app_traceparent(headers.get(b"traceparent"))
    tracing.start_request(call)
    try:
        payload = await read_request(call, receive, headers, rt.limits.max_body_bytes)
        prune.prune(snapshot, call, payload)
        previous = await _previous(rt, call, payload)
        plan = plan_route(snapshot, call, payload, rt.in_flight)
        responses_cascade.narrow(plan, call, payload)
        if previous is not None:
            _pin(plan, previous)
        target = plan.targets[0]
        if payload.get("background") is True and upstream.translates_responses(target.provider, call.endpoint):
            raise GatewayError(400, f"background=true is not available: the provider {target.provider.name} speaks "
                               "only Chat Completions.", param="background", code="unsupported_parameter")  # fmt: skip
        payload["model"] = target.model
        call.served_model, call.provider_id = target.model, target.provider.id
        if _stateless(payload):
            call.extra_headers = cache.plan_cache(snapshot, call, payload, headers)
            if call.cache is not None:
                # Exact only: a response's input is compared whole, never by meaning.
                exact_only = dataclasses.replace(call.cache.policy, semantic=False, trial_id=None)
                call.cache = dataclasses.replace(call.cache, policy=exact_only)
                with tracing.child(call, "cache lookup"):
                    hit = await cache.look_up(rt.cache, call.cache)
                if hit is not None:
                    await _answer_hit(rt, send, call, hit, target)
                    return
        with tracing.child(call, "admission"):
            call.admission = await admit(rt, snapshot, call, plan, payload)
        call.extra_headers = [*call.admission.headers, *call.extra_headers]
        if plan.cheap is not None and await _cascade(rt, send, call, plan, payload):
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


async def _previous(rt: Runtime, call: Call, payload: dict[str, Any]) -> Owner | None:
    """The owner of ``previous_response_id`` (a 404 unless it is this project's); its tokens join the prompt."""
    previous = payload.get("previous_response_id")
    if previous is None:
        return None
    owner = await conversations.owner_of(rt.fast_redis, rt.limits.prefix, previous, call.key.project_id)
    if owner is None:
        raise not_found(previous, "previous_response_id")
    call.context_tokens = owner.tokens
    if owner.translated:
        state = await conversations.state_of(rt.fast_redis, rt.limits.prefix, previous, to_continue=True)
        if state is None:
            raise not_found(previous, "previous_response_id")
        call.history = [*state["context"], *state["input"], *state["response"].get("output", ())]
    return owner


async def _cascade(rt: Runtime, send: Send, call: Call, plan: Plan, payload: dict[str, Any]) -> bool:
    """Answer with the cascade's cheap model (True) when it is kept; False when the strong model must answer."""
    assert plan.cheap is not None
    kept = await responses_cascade.ask_cheap(rt, call, plan, payload)
    if kept is None:
        return False
    await _remember(rt, call, kept, plan.cheap, payload)
    await responses_cascade.send_kept(rt, send, call, plan, payload, kept)
    return True


def _pin(plan: Plan, owner: Owner) -> None:
    """Only the provider holding the conversation can continue it: drop the plan's other targets. One we
    hold can go on with any provider that speaks only Chat (it is sent the whole conversation)."""
    plan.targets = [
        t
        for t in plan.targets
        if upstream.translates_responses(t.provider, ENDPOINT_RESPONSES) == owner.translated
        and (owner.translated or t.provider.id == owner.provider_id)
    ]
    if not plan.targets:
        raise GatewayError(
            400,
            "previous_response_id names a conversation held by a provider this request's route does not use.",
            param="previous_response_id",
            code="previous_response_elsewhere",
        )


def _stateless(payload: dict[str, Any]) -> bool:
    return (
        payload.get("store") is False
        and payload.get("previous_response_id") is None
        and payload.get("background") is not True
        and payload.get("stream") is not True
    )


async def _answer_hit(rt: Runtime, send: Send, call: Call, hit: cache.CacheHit, target: Any) -> None:
    """A stored response as this request's (its own id and time), billed $0."""
    body = {**hit.body, "id": upstream.translated_response_id(call), "created_at": int(time.time())}
    counts = usage_counts(body.get("usage"))
    if counts is not None:
        call.prompt_tokens, call.completion_tokens = counts.prompt_tokens, counts.completion_tokens
        call.reasoning_tokens = counts.reasoning_tokens
    call.cost = ZERO
    if target.counterfactual_price is not None:
        call.counterfactual_cost = target.counterfactual_price.cost(
            prompt_tokens=call.prompt_tokens, cached_tokens=0, completion_tokens=call.completion_tokens,
            reasoning_tokens=call.reasoning_tokens, tier=call.service_tier,
        )  # fmt: skip
    call.decision = route.RouteDecision(kind=route.CACHE, cache_hit=hit.kind)
    call.provider_id, call.ttft_ms = None, call.elapsed_ms()
    await relay.send_answer(send, 200, orjson.dumps(body), cache.hit_headers(call, hit))
    await record.record(rt, call, cache_hit=hit)


async def _answer(rt: Runtime, send: Send, call: Call, plan: Plan, payload: dict[str, Any]) -> None:
    answer = await upstream.call_upstream(rt, call, plan.targets, payload, stream=False)
    call.served_model, call.provider_id = answer.target.model, answer.target.provider.id
    call.ttft_ms = call.elapsed_ms()
    call.status_code = answer.status
    store, text = None, ""
    if answer.status >= 400:
        call.error_code = upstream.upstream_error_code(answer.body)
    else:
        data = relay.answer_object(answer.body)
        text = output_text(data)  # "" for a background response: nothing generated yet
        if data.get("background") is True and data.get("status") in ("queued", "in_progress"):
            _bill_worst_case(rt, call, answer.target, payload, data.get("id"))
        else:
            price.price_response(call, answer.target, data, completion_estimate(text))
        await _remember(rt, call, data, answer.target, payload)
        if call.cache is not None and call.cache.write and data.get("status") == "completed":
            store = data
    await record.while_sending(
        relay.send_answer(send, answer.status, answer.body, upstream.answer_headers(call, answer)),
        rt,
        call,
        cache_store=store,
    )
    if text:
        shadow.offer(rt, call, plan, payload, text)
        await cascade.learn_label(rt, plan, text)


def _bill_worst_case(rt: Runtime, call: Call, target: Any, payload: dict[str, Any], response_id: Any) -> None:
    """A background response is answered before it is generated; its usage never reaches the gateway.
    It is billed at its worst case, marked estimated, so a budget never counts less than it may cost;
    its id goes with the row, and ``apps.ledger.background`` reads its real usage back once it is done."""
    usd, worst = worst_case(target, call.endpoint, payload, rt.limits.unknown_model_max_output, call.context_tokens)
    call.prompt_tokens, call.completion_tokens = worst.prompt_tokens, worst.output_tokens
    call.cost, call.usage_estimated = usd, True
    if is_response_id(response_id):
        call.background_response_id = response_id
    if target.counterfactual_price is not None:
        call.counterfactual_cost = usd


async def _stream(rt: Runtime, send: Send, receive: Receive, call: Call, plan: Plan, payload: dict[str, Any]) -> None:
    answer = await upstream.call_upstream(rt, call, plan.targets, payload, stream=True)
    call.served_model, call.provider_id = answer.target.model, answer.target.provider.id
    if answer.response is None:  # the provider's error, passed through
        await record.provider_error(rt, send, call, answer)
        return
    sse = ResponsesSse(max_event_bytes=rt.limits.max_sse_event_bytes)
    relaying = time.perf_counter()
    await relay.relay_stream(
        send, receive, call, answer.response, strip_usage_chunk=False,
        max_event_bytes=rt.limits.max_sse_event_bytes, relay=sse, translate=answer.translate,
    )  # fmt: skip
    call.upstream_s += time.perf_counter() - relaying  # the stream's time is the provider's
    price.price_response(call, answer.target, sse.response, sse.estimate_completion_tokens())
    if sse.response is not None:
        await _remember(rt, call, sse.response, answer.target, payload)
    await record.while_sending(send({"type": "http.response.body", "body": sse.flush(), "more_body": False}), rt, call)
    if sse.response is not None:
        text = output_text(sse.response)
        shadow.offer(rt, call, plan, payload, text)
        await cascade.learn_label(rt, plan, text)


async def _remember(rt: Runtime, call: Call, response: dict[str, Any], target: Any, payload: dict[str, Any]) -> None:
    """Note a stored response's owner (and the conversation, when we hold it) before the app can learn its id."""
    response_id = response.get("id")
    if response.get("store") is False or not is_response_id(response_id) or call.provider_id is None:
        return
    assert isinstance(response_id, str)
    owner = Owner(
        project_id=call.key.project_id,
        provider_id=call.provider_id,
        model=call.served_model,
        # A provider's input count already holds the earlier turns; our estimate does not.
        tokens=call.prompt_tokens + call.completion_tokens + (call.context_tokens if call.usage_estimated else 0),
        translated=upstream.translates_responses(target.provider, call.endpoint),
    )
    state: dict[str, Any] | None = None
    if owner.translated:
        own = stored_items(input_items(payload.get("input")), response_id)
        state = held_state(response=response, context=call.history or [], input_items=own)
    try:
        await conversations.remember(rt.fast_redis, rt.limits.prefix, response_id, owner, state)
    except OSError:
        # Without its owner the response cannot be retrieved or continued through us; the answer still stands.
        call.decision.reason = "response-not-remembered"
        return
    if state is not None:
        await rt.held_writer.write(held_store_event(
            response=response, input_items=state["input"], project_id=owner.project_id,
            provider_id=owner.provider_id, model=owner.model, created_at=call.created_at,
        ))  # fmt: skip


# The ledger's endpoint for each stored-response call: free, but requests all the same (who read what, when).
_STORED_ENDPOINTS = {
    ("GET", ""): "responses.retrieve",
    ("DELETE", ""): "responses.delete",
    ("POST", "cancel"): "responses.cancel",
    ("GET", "input_items"): "responses.input_items",
}


async def stored(rt: Runtime, scope: Scope, send: Send, request_id: str, response_id: str, action: str) -> None:
    """Retrieve, delete, cancel or list the input items of one of this project's stored responses; each
    call gets its ledger row at $0 (the provider does not bill them), refusals included."""
    headers = dict(scope["headers"])
    key = authenticate(rt.snapshot, headers.get(b"authorization"))
    endpoint = _STORED_ENDPOINTS[(scope["method"], action)]
    call = Call(request_id, endpoint, started=time.perf_counter(), created_at=time.time(), key=key)
    attribute(call, headers)
    try:
        status, body = await _stored_answer(rt, scope, call, response_id, action)
    except GatewayError as exc:
        await record.refused(rt, send, call, exc)
        return
    call.status_code = status
    if status >= 400:
        call.error_code = upstream.upstream_error_code(body)
    reply = relay.send_answer(send, status, body, [(b"x-request-id", request_id.encode())])
    await record.while_sending(reply, rt, call)


async def _stored_answer(rt: Runtime, scope: Scope, call: Call, response_id: str, action: str) -> tuple[int, bytes]:
    if not is_response_id(response_id):
        raise not_found(response_id[:64])
    project_id = call.key.project_id
    owner = await conversations.owner_of(rt.fast_redis, rt.limits.prefix, response_id, project_id)
    if owner is not None:
        call.served_model = call.requested_model = owner.model
    if owner is not None and owner.translated:
        return 200, await responses_held.answer(rt, scope, response_id, action, project_id)
    provider = rt.snapshot.providers.get(owner.provider_id) if owner is not None else None
    if owner is None or provider is None:
        raise not_found(response_id)
    call.provider_id = provider.id
    url = f"{provider.base_url}/responses/{response_id}" + (f"/{action}" if action else "")
    query = scope.get("query_string") or b""
    if query:
        url += "?" + query.decode("latin-1")
    limit = rt.limits.max_upstream_body_bytes
    try:
        async with asyncio.timeout(provider.total_timeout):
            reply = await rt.upstream.request(
                scope["method"], url, upstream.upstream_headers(provider), limit=limit,
                read_timeout=provider.timeout.sock_read, connect_timeout=provider.timeout.connect,
            )  # fmt: skip
        upstream.refuse_redirect(reply.status)
        body, status = reply.body, reply.status
    except BodyTooLarge:
        raise upstream.UpstreamTooLarge(limit).error from None
    except TimeoutError:
        raise GatewayError(504, f"The provider {provider.name} did not answer in time.", type="api_error",
                           code="upstream_timeout") from None  # fmt: skip
    except aiohttp.ClientError as exc:
        raise GatewayError(502, f"Could not reach the provider {provider.name}: {exc}.", type="api_error",
                           code="upstream_unavailable") from None  # fmt: skip
    if scope["method"] == "DELETE" and status == 200:
        await conversations.forget(rt.fast_redis, rt.limits.prefix, response_id)
    return status, body
