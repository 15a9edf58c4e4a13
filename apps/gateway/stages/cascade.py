"""Cascade: ask the rule's cheap model first, keep its answer when it is confident, else escalate.

The cheap call is always non-streamed (its confidence must be known before the
first byte reaches the app); a kept answer is sent as a stream when the app
asked for one. An escalated cheap call is billed as its own ledger row
(``<request id>-cheap``) and its cost is settled with the request. Optionally
an answer that is not a known label escalates too; the strong model's answers
become known labels.
"""

from __future__ import annotations

from typing import Any

from apps.core import names
from apps.core.errors import GatewayError
from apps.core.route import CHEAP, ESCALATED, KEPT
from apps.core.routing import CascadeView, confidence, normalize_text
from apps.core.text import answer_text
from apps.gateway.asgi import Send
from apps.gateway.call import ZERO, Call
from apps.gateway.runtime import Runtime
from apps.gateway.stages import price, record, relay, shadow, upstream
from apps.gateway.stages.plan import Plan


async def cascade(rt: Runtime, send: Send, call: Call, plan: Plan, payload: dict[str, Any]) -> bool:
    """Answer with the cheap model (True) when it is confident; False when the strong model must answer."""
    assert plan.cheap is not None and plan.rule is not None and plan.rule.cascade is not None
    cheap, rule, rule_cascade = plan.cheap, plan.rule, plan.rule.cascade
    request = {**payload, "logprobs": True, "stream": False}
    request.pop("stream_options", None)
    side = call.side_row(
        "cheap",
        decision=call.decision.variant(part=CHEAP),
        served_model=cheap.model,
        provider_id=cheap.provider.id,
        streamed=False,
    )
    verdict, reason, data = ESCALATED, "cheap-failed", {}
    try:
        answer = await upstream.call_upstream(rt, side, [cheap], request, stream=False)
    except GatewayError as exc:
        side.status_code, side.error_code = exc.status, exc.code or exc.type
    else:
        side.status_code = answer.status
        side.ttft_ms = call.elapsed_ms()
        if answer.status != 200:
            side.error_code = upstream.upstream_error_code(answer.body)
        else:
            data = relay.answer_object(answer.body)
            price.price_answer(side, cheap, data)
            verdict, reason = await _verdict(rt, rule.id, rule_cascade, data)
    # Timed-out attempts of the cheap call the provider may bill are the request's to carry.
    call.side_cost += side.side_cost
    call.upstream_s += side.upstream_s
    call.attempts += side.attempts
    if verdict == ESCALATED:
        call.decision.cascade, call.decision.reason = ESCALATED, reason
        side.decision.cascade, side.decision.reason = ESCALATED, reason
        call.side_cost += side.cost
        side.counterfactual_cost = ZERO  # the app would not have made this call: its cost is the cascade's price
        await rt.ledger.write(side.event())
        return False

    # Kept: the cheap call is the answer (what its upstream call tried included).
    call.decision = side.decision.variant(part="", cascade=KEPT, reason=reason)
    call.served_model, call.provider_id, call.ttft_ms = cheap.model, cheap.provider.id, side.ttft_ms
    call.prompt_tokens, call.cached_tokens = side.prompt_tokens, side.cached_tokens
    call.completion_tokens, call.usage_estimated = side.completion_tokens, side.usage_estimated
    call.cost, call.counterfactual_cost = side.cost, side.counterfactual_cost
    if not payload.get("logprobs"):
        for choice in data.get("choices") or ():
            choice["logprobs"] = None
    headers = [(b"x-request-id", call.request_id.encode()), call.route_header(), *call.extra_headers]
    await relay.send_completion(send, call, payload, data, headers)
    store = data if call.cache is not None and call.cache.write and price.cacheable(data) else None
    await record.record(rt, call, cache_store=store)
    shadow.offer(rt, call, plan, payload, answer_text(data))
    return True


async def _verdict(rt: Runtime, rule_id: int, cascade_: CascadeView, data: dict[str, Any]) -> tuple[str, str]:
    """KEPT or ESCALATED, and why."""
    try:
        score = confidence(data, tokens=cascade_.tokens, aggregate=cascade_.aggregate)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        score = None  # malformed logprobs count as none
    if score is None:
        return ESCALATED, "no-logprobs"
    if score < cascade_.threshold:
        return ESCALATED, f"confidence={score:.3f}<{cascade_.threshold:g}"
    if cascade_.escalate_new_labels:
        label = normalize_text(answer_text(data))
        if label not in cascade_.labels and not await rt.redis.sismember(
            names.cascade_labels(rt.limits.prefix, rule_id), label
        ):
            return ESCALATED, "new-label"
    return KEPT, f"confidence={score:.3f}"


async def learn_label(rt: Runtime, plan: Plan, text: str) -> None:
    """After an escalation, remember the strong model's answer as a known label of the rule's cascade."""
    if plan.cheap is None or plan.rule is None or plan.rule.cascade is None:
        return
    label = normalize_text(text)
    if plan.rule.cascade.escalate_new_labels and label and len(label) <= 200:
        await rt.redis.sadd(names.cascade_labels(rt.limits.prefix, plan.rule.id), label)
