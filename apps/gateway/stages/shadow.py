"""Shadow: after the app has its answer, offer a sampled copy of the request to the rule's shadow model.

The offer never waits (``apps.gateway.shadow_queue``: a full queue drops the sample).
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.core.anthropic import ANTHROPIC_KINDS
from apps.core.errors import GatewayError
from apps.core.request import ENDPOINT_CHAT, ENDPOINT_RESPONSES
from apps.gateway.call import Call
from apps.gateway.runtime import Runtime
from apps.gateway.shadow_queue import ShadowJob
from apps.gateway.stages.plan import Plan
from apps.gateway.stages.prune import window
from apps.gateway.stages.upstream import translates_responses, upstream_body, upstream_headers, upstream_url


def offer(rt: Runtime, call: Call, plan: Plan, payload: dict[str, Any], primary_text: str) -> None:
    """Queue the shadow copy of an answered request (never waits)."""
    if plan.shadow is None or plan.rule is None or call.status_code != 200:
        return
    target = plan.shadow
    request = {**payload, "model": target.model, "stream": False}
    request.pop("stream_options", None)
    shape = "chat"
    measure = plan.rule.shadow_confidence
    if measure is not None:
        if call.endpoint != ENDPOINT_CHAT:
            return  # confidence needs chat logprobs, as the cascade it tries does
        request["logprobs"] = True
    if plan.rule.shadow_history_turns is not None:
        # A history-window trial measures only the requests its window shortens (chat's messages).
        if call.endpoint != ENDPOINT_CHAT or not window(request, plan.rule.shadow_history_turns):
            return
    if call.endpoint == ENDPOINT_RESPONSES:
        if target.provider.kind in ANTHROPIC_KINDS or payload.get("previous_response_id") is not None:
            return  # Anthropic serves no Responses; a continuation exists only on its own provider
        # The shadow leaves nothing behind at the provider and answers now, whatever the app asked.
        request["store"] = False
        request.pop("background", None)
        shape = "chat" if translates_responses(target.provider, call.endpoint) else "responses"
    try:
        # The shadow provider's own API (an Anthropic kind is asked in the Messages API).
        body = orjson.loads(upstream_body(rt, call, target, request))
    except GatewayError:
        return  # a request the shadow's vendor cannot take (n > 1 for Claude): no sample
    rt.shadows.offer(
        ShadowJob(
            request_id=call.request_id,
            rule_id=plan.rule.id,
            organization_id=call.key.organization_id,
            project_id=call.key.project_id,
            url=upstream_url(target.provider, call.endpoint),
            headers=upstream_headers(target.provider),
            timeout=target.provider.timeout,
            payload=body,
            provider=target.provider,
            price=target.price,
            primary_model=call.served_model,
            primary_text=primary_text,
            primary_latency_ms=call.elapsed_ms(),
            primary_cost=call.cost,
            answer_shape=shape,
            confidence=measure,
        )
    )
