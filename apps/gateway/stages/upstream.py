"""Call upstream: the plan's targets in order, each with its provider's retries, skipping open circuits.

Retryable answers (408, 409, 429, 5xx), timeouts and connection errors count
against the deployment's circuit breaker and move on: the same target again
after a backoff, then the next target. Redirects are never followed (the URL
is tenant-set; the session only connects to addresses the egress policy
admits). An attempt we gave up on after sending it may still be billed by the
provider: it gets its own ledger row, marked possibly billed.

A provider that speaks only Chat Completions (``responses_api`` off) is asked a
``/v1/responses`` request as a chat request (``apps.core.responses_chat``), with the
conversation the gateway holds before it; its completion or chunks come back as a
Response object or Responses events, so the Responses handler reads every provider alike.

An Anthropic-kind provider is asked in its own API (``apps.core.anthropic``): the
chat request goes out as a Messages request, and its answer, error or stream comes
back as a chat completion, an OpenAI-shaped error or chat chunks, so the stages
after this one never know which vendor answered. Its 529 (overloaded) is retryable.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from apps.core.anthropic import (
    ANTHROPIC_KINDS,
    ANTHROPIC_VERSION,
    ENDPOINT_MESSAGES,
    chat_to_messages,
    error_to_openai,
    message_to_completion,
    without_cache_control,
)
from apps.core.anthropic_stream import MessagesToChat
from apps.core.errors import GatewayError, bad_request, upstream_unavailable
from apps.core.request import ENDPOINT_CHAT, ENDPOINT_RESPONSES
from apps.core.responses_chat import completion_to_response, responses_to_chat
from apps.core.responses_chat_stream import ChatToResponses
from apps.core.route import ATTEMPT, Tried
from apps.core.snapshot import ProviderTarget
from apps.core.text import json_object
from apps.core.upstream_http import BodyTooLarge, Reply, UpstreamStream
from apps.gateway import metrics, tracing
from apps.gateway.breaker import deployment
from apps.gateway.call import ZERO, Call
from apps.gateway.runtime import Runtime
from apps.gateway.stages.admit import worst_case
from apps.gateway.stages.plan import Target

# Upstream answers worth another try (same target after a backoff, then the next target).
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(slots=True)
class Answer:
    """What one upstream attempt returned; ``response`` is an open stream (status 200) to relay."""

    target: Target
    status: int
    body: bytes
    retry_after: str | None
    response: UpstreamStream | None = None
    # An Anthropic stream read as chat chunks, or a chat stream read as Responses events.
    translate: MessagesToChat | ChatToResponses | None = None


class UpstreamTooLarge(Exception):
    """A provider's answer past GATEWAY_MAX_UPSTREAM_BODY_BYTES; ``error`` is the 502 the app gets."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.error = upstream_unavailable(
            f"The provider's answer is larger than {limit} bytes; it was not read.", code="upstream_response_too_large"
        )


class UpstreamRedirect(aiohttp.ClientError):
    """A provider answered with a redirect: never followed (it could point inside our network)."""


async def call_upstream(
    rt: Runtime, call: Call, targets: list[Target], payload: dict[str, Any], *, stream: bool
) -> Answer:
    """Try the targets in order, each with its provider's retries, skipping open circuits.

    Returns the first answer that is not worth retrying (success or the app's
    own error, e.g. a 400), else the last failure: the provider's error
    response passed through, or a gateway 502/503/504. Each target that
    failed is noted on the decision.
    """
    breakers = rt.breakers
    skipped: list[Tried] = []
    last: Answer | GatewayError | None = None
    for position, target in enumerate(targets):
        provider, model = target.provider, target.model
        if position:
            metrics.fell_back(targets[position - 1].model)
        name = deployment(provider.id, model)
        if breakers.tripped(name) and not await breakers.allow(provider.id, model):
            skipped.append(Tried(model, provider.name, "circuit-open"))
            last = last or upstream_unavailable(
                f"The provider {provider.name} keeps failing for {model}; it is paused (circuit open).",
                status=503,
                code="circuit_open",
            )
            continue
        body = upstream_body(rt, call, target, payload)
        for attempt in range(provider.max_retries + 1):
            retry_after, reason, status = None, "", 0
            rt.in_flight[name] += 1
            span = tracing.start_attempt(call, provider.name, model, attempt) if call.span is not None else None
            started = time.perf_counter()
            try:
                traceparent = tracing.upstream_traceparent(call, span) if call.traceparent or span else None
                answer = await _attempt(rt, target, call, payload, body, stream=stream, traceparent=traceparent)
            except TimeoutError as exc:
                reason = "timeout"
                last = upstream_unavailable(
                    f"The provider {provider.name} did not answer in time.", status=504, code="upstream_timeout"
                )
                if not isinstance(exc, aiohttp.ConnectionTimeoutError):
                    # The request reached the provider, which may still answer it and bill us.
                    await possibly_billed(rt, call, target, payload, last)
            except UpstreamTooLarge as exc:
                reason = "too-large"
                await possibly_billed(rt, call, target, payload, exc.error)
                raise exc.error from None
            except aiohttp.ClientError as exc:
                reason = "unreachable"
                last = upstream_unavailable(f"Could not reach the provider {provider.name}: {exc}.")
            else:
                status = answer.status
                if answer.status not in RETRYABLE_STATUS:
                    if breakers.tripped(name):
                        await breakers.success(provider.id, model)
                    if skipped or attempt:
                        call.decision.tried += tuple(skipped)
                        call.decision.retries = attempt
                    return answer
                reason, retry_after, last = str(answer.status), answer.retry_after, answer
            finally:
                rt.in_flight[name] -= 1
                call.upstream_s += time.perf_counter() - started
                if span is not None:
                    tracing.end_attempt(span, status, reason)
            await breakers.failure(provider.id, model)
            if attempt < provider.max_retries:
                delay = backoff(
                    attempt, retry_after, base=rt.limits.retry_base_seconds, cap=rt.limits.retry_max_seconds
                )
                if delay is None:
                    break  # the provider asks for a longer pause than we wait: try the next target
                metrics.retried(model)
                await asyncio.sleep(delay)
        skipped.append(Tried(model, provider.name, reason))
    call.decision.tried += tuple(skipped)
    if isinstance(last, Answer):
        return last
    raise last or upstream_unavailable("No provider could take the request.")


def backoff(attempt: int, retry_after: str | None, *, base: float, cap: float) -> float | None:
    """Seconds to wait before retry ``attempt + 1``: the provider's Retry-After when it gives one
    we are willing to wait (up to ``cap``), else exponential backoff from ``base`` with full jitter;
    None means do not wait here (try the next target)."""
    if retry_after:
        try:
            wanted = float(retry_after)
        except ValueError:
            wanted = -1.0  # an HTTP date: fall back to our own backoff
        if wanted >= 0:
            return wanted if wanted <= cap else None
    return random.uniform(0, min(cap, base * 2**attempt))


async def possibly_billed(
    rt: Runtime, call: Call, target: Target, payload: dict[str, Any], error: GatewayError
) -> None:
    """Record an attempt we gave up on that the provider may bill: its own ledger row, marked possibly
    billed, at the request's worst case on ``target`` (we cannot know how far the provider got). Its
    cost stays counted against the request's budgets (settled with the request)."""
    usd, worst = worst_case(target, call.endpoint, payload, rt.limits.unknown_model_max_output, call.context_tokens)
    call.attempts += 1
    row = call.side_row(
        f"t{call.attempts}",
        decision=call.decision.variant(part=ATTEMPT),
        served_model=target.model,
        provider_id=target.provider.id,
        prompt_tokens=worst.prompt_tokens,
        cached_tokens=0,
        completion_tokens=worst.output_tokens,
        usage_estimated=True,
        possibly_billed=True,
        cost=usd,
        counterfactual_cost=ZERO,
        status_code=error.status,
        error_code=error.code or error.type,
    )
    call.side_cost += usd
    await rt.ledger.write(row.event())


async def _attempt(
    rt: Runtime,
    target: Target,
    call: Call,
    payload: dict[str, Any],
    body: bytes,
    *,
    stream: bool,
    traceparent: str | None,
) -> Answer:
    provider = target.provider
    url, headers = upstream_url(provider, call.endpoint), upstream_headers(provider)
    if traceparent:
        headers["traceparent"] = traceparent
    answer = await _exchange(rt, target, url, headers, body, stream=stream)
    if provider.kind in ANTHROPIC_KINDS:
        return _from_anthropic(answer, rt.limits.max_sse_event_bytes)
    if translates_responses(provider, call.endpoint):
        return _from_chat(answer, translated_response_id(call), payload, rt.limits.max_sse_event_bytes)
    return answer


async def _exchange(
    rt: Runtime, target: Target, url: str, headers: dict[str, str], body: bytes, *, stream: bool
) -> Answer:
    provider = target.provider
    limit = rt.limits.max_upstream_body_bytes
    try:
        if stream:  # a stream may run for minutes: only its read timeout holds
            reply: Reply | UpstreamStream = await rt.upstream.stream(
                url, headers, body, limit=limit, read_timeout=provider.timeout.sock_read,
                connect_timeout=provider.timeout.connect,
            )  # fmt: skip
        else:
            reply = await rt.upstream.post(
                url, headers, body, limit=limit, read_timeout=provider.timeout.sock_read,
                connect_timeout=provider.timeout.connect, total_timeout=provider.total_timeout,
            )  # fmt: skip
    except BodyTooLarge:
        raise UpstreamTooLarge(limit) from None
    if isinstance(reply, UpstreamStream):
        return Answer(target, 200, b"", None, reply)
    refuse_redirect(reply.status)
    return Answer(target, reply.status, reply.body, reply.retry_after)


def refuse_redirect(status: int) -> None:
    """A 3xx from a provider is an error, never followed (the URL is tenant-set; it could point inward)."""
    if 300 <= status < 400:
        raise UpstreamRedirect(f"it answered {status} (a redirect), and redirects are not followed")


def upstream_body(rt: Runtime, call: Call, target: Target, payload: dict[str, Any]) -> bytes:
    """The request as ``target``'s provider reads it: a Messages request for an Anthropic kind, where
    a missing ``max_tokens`` (Anthropic requires one) is the worst case the budget reserved."""
    if target.provider.kind in ANTHROPIC_KINDS:
        if call.endpoint != ENDPOINT_CHAT:
            raise bad_request(f"The provider {target.provider.name} (Anthropic) serves chat requests only.")
        _usd, worst = worst_case(target, call.endpoint, payload, rt.limits.unknown_model_max_output)
        request = chat_to_messages({**payload, "model": target.model}, default_max_tokens=worst.output_tokens)
        return orjson.dumps(request)
    if translates_responses(target.provider, call.endpoint):
        return orjson.dumps(responses_to_chat({**payload, "model": target.model}, call.history))
    if call.entry == ENDPOINT_MESSAGES:
        payload = without_cache_control(payload)  # Anthropic's cache breakpoints mean nothing to others
    if payload.get("model") == target.model:  # the first target's, as the pipeline set it: no copy
        return orjson.dumps(payload)
    return orjson.dumps({**payload, "model": target.model})


def answer_headers(call: Call, answer: Answer) -> list[tuple[bytes, bytes]]:
    """The headers a relayed answer carries: request id, the provider's Retry-After, route, limits, cache."""
    headers = [(b"x-request-id", call.request_id.encode())]
    if answer.retry_after:
        headers.append((b"retry-after", answer.retry_after.encode()))
    return [*headers, call.route_header(), *call.extra_headers]


def translates_responses(provider: ProviderTarget, endpoint: str) -> bool:
    """Whether a request to ``endpoint`` goes to ``provider`` as a chat request (Responses on a Chat-only one)."""
    return endpoint == ENDPOINT_RESPONSES and not provider.responses_api and provider.kind not in ANTHROPIC_KINDS


def translated_response_id(call: Call) -> str:
    """The id of a response the gateway answers itself (translated or from the cache): the request's own."""
    return "resp_" + call.request_id[4:]


def upstream_url(provider: ProviderTarget, endpoint: str) -> str:
    if provider.kind in ANTHROPIC_KINDS:
        return f"{provider.base_url}/messages"
    if translates_responses(provider, endpoint):
        return f"{provider.base_url}/chat/completions"
    return f"{provider.base_url}/{endpoint.replace('.', '/')}"


def upstream_headers(provider: ProviderTarget) -> dict[str, str]:
    # The gateway reads every answer (usage, errors) and relays it as it came: a provider must not gzip it,
    # or the app would get a body it was never told is gzipped (aiohttp, used here before, offered gzip).
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if provider.kind in ANTHROPIC_KINDS:
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if provider.secret:
            headers["x-api-key"] = provider.secret
    elif provider.secret:
        headers["Authorization"] = f"Bearer {provider.secret}"
    return headers


def _from_anthropic(answer: Answer, max_event_bytes: int) -> Answer:
    """An Anthropic provider's answer as a chat provider's: the completion, the error, or the stream translated."""
    if answer.response is not None:
        answer.translate = MessagesToChat(model=answer.target.model, max_event_bytes=max_event_bytes)
    elif answer.status == 200:
        message = json_object(answer.body)
        if message is not None:  # else not JSON: priced by estimate, never cached
            answer.body = orjson.dumps(message_to_completion(message))
    elif answer.status >= 400:
        answer.body = error_to_openai(answer.status, answer.body)
    return answer


def _from_chat(answer: Answer, response_id: str, payload: dict[str, Any], max_event_bytes: int) -> Answer:
    """A Chat-only provider's answer to a Responses request as a Responses provider's (its errors are alike)."""
    if answer.response is not None:
        answer.translate = ChatToResponses(response_id=response_id, payload=payload, model=answer.target.model,
                                           max_event_bytes=max_event_bytes)  # fmt: skip
    elif answer.status == 200:
        completion = json_object(answer.body)
        if completion is not None:
            model_payload = {**payload, "model": answer.target.model}
            answer.body = orjson.dumps(
                completion_to_response(completion, response_id=response_id, payload=model_payload)
            )
    return answer


def upstream_error_code(body: bytes) -> str:
    """The provider's error code (or type), to record with the failed request."""
    try:
        error = orjson.loads(body).get("error") or {}
        return str(error.get("code") or error.get("type") or "upstream_error")[:100]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return "upstream_error"
