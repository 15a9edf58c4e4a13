"""A cascade on ``/v1/responses``: the rule's cheap model first, kept when its logprobs say it is confident.

As on chat (``apps.gateway.stages.cascade``): the cheap call is never streamed (its confidence must be
known before the first byte reaches the app), and a kept answer is sent as the typed event stream when
the app asked for one (``apps.core.responses_events``). The cheap call asks for the output text's
logprobs (``include: ["message.output_text.logprobs"]``); they are emptied from a kept answer unless
the app asked for them itself. An escalated cheap call is its own ledger row, settled with the request.

No cheap call (the strong model only, ``strong-only``) for a request the cheap model cannot take over:
a background one (answered before it is generated: nothing to judge), a continuation
(``previous_response_id`` is held by the provider that made it), or a cheap model on a provider that
speaks only Chat (its translation carries no logprobs). The cheap call is stored as the app asked, so a
kept answer's id can be retrieved and continued; an escalated one stays stored at its provider unseen.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.core.responses import output_text
from apps.core.responses_events import events_from_response
from apps.core.route import ESCALATED, STRONG_ONLY
from apps.core.routing import response_confidence
from apps.core.text import completion_estimate
from apps.gateway.asgi import Send, send_events
from apps.gateway.call import Call
from apps.gateway.runtime import Runtime
from apps.gateway.stages import price, record, relay, shadow, upstream
from apps.gateway.stages.cascade import ask, cheap_row, escalate, judge, keep
from apps.gateway.stages.plan import Plan

LOGPROBS = "message.output_text.logprobs"


def narrow(plan: Plan, call: Call, payload: dict[str, Any]) -> None:
    """Drop the cheap call where it cannot be judged or cannot answer (see the module docstring)."""
    if plan.cheap is None:
        return
    if (
        payload.get("background") is True
        or payload.get("previous_response_id") is not None
        or upstream.translates_responses(plan.cheap.provider, call.endpoint)
    ):
        plan.cheap = None
        call.decision.cascade = STRONG_ONLY


def asks_logprobs(payload: dict[str, Any]) -> bool:
    include = payload.get("include")
    return isinstance(include, list) and LOGPROBS in include


async def ask_cheap(rt: Runtime, call: Call, plan: Plan, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The cheap model's answer when it is kept (``call`` now bills it), or None: the strong model must answer."""
    assert plan.cheap is not None and plan.rule is not None and plan.rule.cascade is not None
    cheap, rule, rule_cascade = plan.cheap, plan.rule, plan.rule.cascade
    asked = payload.get("include")
    include: list[Any] = asked if isinstance(asked, list) else []
    request = {**payload, "stream": False, "include": include if asks_logprobs(payload) else [*include, LOGPROBS]}
    side = cheap_row(call, cheap)
    verdict, reason = ESCALATED, "cheap-failed"
    data = await ask(rt, call, side, cheap, request)
    if data is not None:
        price.price_response(side, cheap, data, completion_estimate(output_text(data)))
        if data.get("status") in ("completed", "incomplete"):
            verdict, reason = await judge(rt, rule.id, rule_cascade, data, score=response_confidence, text=output_text)
    if verdict == ESCALATED or data is None:
        await escalate(rt, call, side, reason)
        return None
    keep(call, side, reason)
    if not asks_logprobs(payload):
        _empty_logprobs(data)
    return data


def _empty_logprobs(response: dict[str, Any]) -> None:
    """What the app gets without asking for logprobs: OpenAI's empty lists."""
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and "logprobs" in part:
                part["logprobs"] = []


async def send_kept(
    rt: Runtime, send: Send, call: Call, plan: Plan, payload: dict[str, Any], kept: dict[str, Any]
) -> None:
    """Send a kept cheap answer (as JSON, or as its event stream) while it is recorded as the request's."""
    headers = [(b"x-request-id", call.request_id.encode()), call.route_header(), *call.extra_headers]
    store = None
    if call.cache is not None and call.cache.write and kept.get("status") == "completed":
        store = kept
    if call.streamed:
        reply = send_events(send, events_from_response(kept), headers)
    else:
        reply = relay.send_answer(send, 200, orjson.dumps(kept), headers)
    await record.while_sending(reply, rt, call, cache_store=store)
    shadow.offer(rt, call, plan, payload, output_text(kept))
