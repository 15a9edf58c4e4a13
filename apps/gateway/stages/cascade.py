"""Cascade: ask the rule's cheap model first, keep its answer when it is confident, else escalate.

The cheap call is always non-streamed (its confidence must be known before the
first byte reaches the app); a kept answer is sent as a stream when the app
asked for one. An escalated cheap call is billed as its own ledger row
(``<request id>-cheap``) and its cost is settled with the request. Optionally
an answer that is not a known label escalates too; the strong model's answers
become known labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from apps.core import names
from apps.core.errors import GatewayError
from apps.core.route import CHEAP, ESCALATED, KEPT
from apps.core.routing import CascadeView, answer_confidence, normalize_text
from apps.core.text import answer_text
from apps.gateway.asgi import Send
from apps.gateway.call import ZERO, Call
from apps.gateway.runtime import Runtime
from apps.gateway.stages import price, record, relay, shadow, upstream
from apps.gateway.stages.plan import Plan, Target


async def cascade(rt: Runtime, send: Send, call: Call, plan: Plan, payload: dict[str, Any]) -> bool:
    """Answer with the cheap model (True) when it is confident; False when the strong model must answer."""
    assert plan.cheap is not None and plan.rule is not None and plan.rule.cascade is not None
    cheap, rule, rule_cascade = plan.cheap, plan.rule, plan.rule.cascade
    request = {**payload, "logprobs": True, "stream": False}
    request.pop("stream_options", None)
    side = cheap_row(call, cheap)
    verdict, reason = ESCALATED, "cheap-failed"
    data = await ask(rt, call, side, cheap, request)
    if data is not None:
        price.price_answer(side, cheap, data)
        verdict, reason = await judge(rt, rule.id, rule_cascade, data)
    if verdict == ESCALATED or data is None:
        await escalate(rt, call, side, reason)
        return False
    keep(call, side, reason)
    if not payload.get("logprobs"):
        for choice in data.get("choices") or ():
            choice["logprobs"] = None
    headers = [(b"x-request-id", call.request_id.encode()), call.route_header(), *call.extra_headers]
    await relay.send_completion(send, call, payload, data, headers)
    store = data if call.cache is not None and call.cache.write and price.cacheable(data) else None
    await record.record(rt, call, cache_store=store)
    shadow.offer(rt, call, plan, payload, answer_text(data))
    return True


async def ask(rt: Runtime, call: Call, side: Call, cheap: Target, request: dict[str, Any]) -> dict[str, Any] | None:
    """The cheap model's whole answer (its row, ``side``, learns how the call went), or None when it failed."""
    try:
        answer = await upstream.call_upstream(rt, side, [cheap], request, stream=False)
    except GatewayError as exc:
        side.status_code, side.error_code = exc.status, exc.code or exc.type
        return None
    side.status_code, side.ttft_ms = answer.status, call.elapsed_ms()
    if answer.status != 200:
        side.error_code = upstream.upstream_error_code(answer.body)
        return None
    return relay.answer_object(answer.body)


def cheap_row(call: Call, cheap: Target) -> Call:
    """The cheap call's own ledger row (``<request id>-cheap``), written only if it escalates."""
    return call.side_row(
        "cheap",
        decision=call.decision.variant(part=CHEAP),
        served_model=cheap.model,
        provider_id=cheap.provider.id,
        streamed=False,
    )


async def escalate(rt: Runtime, call: Call, side: Call, reason: str) -> None:
    """The strong model answers: the cheap call's row is written now, its cost settled with the request."""
    # Timed-out attempts of the cheap call the provider may bill are the request's to carry.
    call.side_cost += side.side_cost + side.cost
    call.upstream_s += side.upstream_s
    call.attempts += side.attempts
    call.decision.cascade, call.decision.reason = ESCALATED, reason
    side.decision.cascade, side.decision.reason = ESCALATED, reason
    side.counterfactual_cost = ZERO  # the app would not have made this call: its cost is the cascade's price
    await rt.ledger.write(side.event())


def keep(call: Call, side: Call, reason: str) -> None:
    """The cheap call is the answer (what its upstream call tried included): the request takes its row."""
    call.side_cost += side.side_cost
    call.upstream_s += side.upstream_s
    call.attempts += side.attempts
    call.decision = side.decision.variant(part="", cascade=KEPT, reason=reason)
    call.served_model, call.provider_id, call.ttft_ms = side.served_model, side.provider_id, side.ttft_ms
    call.prompt_tokens, call.cached_tokens = side.prompt_tokens, side.cached_tokens
    call.completion_tokens, call.reasoning_tokens = side.completion_tokens, side.reasoning_tokens
    call.usage_estimated, call.service_tier = side.usage_estimated, side.service_tier
    call.cost, call.counterfactual_cost = side.cost, side.counterfactual_cost


class Scorer(Protocol):
    def __call__(self, answer: dict[str, Any], /, *, tokens: int, aggregate: str) -> float | None: ...


async def judge(
    rt: Runtime, rule_id: int, cascade_: CascadeView, data: dict[str, Any], *, score: Scorer = answer_confidence,
    text: Callable[[dict[str, Any]], str] = answer_text,
) -> tuple[str, str]:  # fmt: skip
    """KEPT or ESCALATED, and why: ``score`` reads the answer's confidence (a chat completion's by default;
    ``apps.core.routing.response_confidence`` for a Responses answer) and ``text`` its label."""
    try:
        value = score(data, tokens=cascade_.tokens, aggregate=cascade_.aggregate)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        value = None  # malformed logprobs count as none
    if value is None:
        return ESCALATED, "no-logprobs"
    if value < cascade_.threshold:
        return ESCALATED, f"confidence={value:.3f}<{cascade_.threshold:g}"
    if cascade_.escalate_new_labels:
        label = normalize_text(text(data))
        if label not in cascade_.labels and not await rt.redis.sismember(
            names.cascade_labels(rt.limits.prefix, rule_id), label
        ):
            return ESCALATED, "new-label"
    return KEPT, f"confidence={value:.3f}"


async def learn_label(rt: Runtime, plan: Plan, text: str) -> None:
    """After an escalation, remember the strong model's answer as a known label of the rule's cascade."""
    if plan.cheap is None or plan.rule is None or plan.rule.cascade is None:
        return
    label = normalize_text(text)
    if plan.rule.cascade.escalate_new_labels and label and len(label) <= 200:
        await rt.redis.sadd(names.cascade_labels(rt.limits.prefix, plan.rule.id), label)
