"""Admit: reserve the request's worst case on every budget and rate limit that applies.

One Redis round trip at most (none while this process's leases have room),
through ``apps.enforcement``. The worst case is the dearest target the plan may
end on, plus the cheap call when a cascade asks one first. Redis down fails
closed (503) unless the operator chose to fail open, which the decision notes.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from redis.exceptions import RedisError

from apps.core.errors import GatewayError
from apps.core.pricing import reserve_tiers
from apps.core.request import WorstCase, model_worst_case
from apps.core.snapshot import Snapshot
from apps.enforcement.limiter import Admission
from apps.gateway.call import ZERO, Call
from apps.gateway.runtime import Runtime
from apps.gateway.stages.plan import Plan, Target

logger = logging.getLogger(__name__)


def worst_case(
    target: Target,
    endpoint: str,
    payload: dict[str, Any],
    unknown_model_max_output: int,
    context_tokens: int = 0,
    prompt_tokens: int | None = None,
) -> tuple[Decimal, WorstCase]:
    """The most a request can cost (USD) and use (tokens) on ``target`` (the shared rule), with
    ``context_tokens`` of earlier turns (``previous_response_id``) in its prompt, at the dearest tier
    it may be billed at. ``prompt_tokens``: the payload's prompt estimate, when the caller has it."""
    worst = model_worst_case(
        endpoint, payload, target.model, unknown_model_max_output=unknown_model_max_output, prompt_tokens=prompt_tokens
    )
    if context_tokens:
        worst = WorstCase(worst.prompt_tokens + context_tokens, worst.output_tokens)
    usd = (
        target.price.worst_cost(
            prompt_tokens=worst.prompt_tokens,
            output_tokens=worst.output_tokens,
            tiers=reserve_tiers(payload.get("service_tier")),
        )
        if target.price is not None
        else ZERO
    )
    return usd, worst


async def admit(
    rt: Runtime, snapshot: Snapshot, call: Call, plan: Plan, payload: dict[str, Any], *, estimated: bool = False
) -> Admission:
    """Reserve, or raise the 429 (budget or rate limit) or 503 (limits unavailable) the app should see.

    ``estimated``: ``call.prompt_tokens`` is the estimate of ``payload`` as it is now (validation set it and
    pruning kept it so), which spares estimating the prompt again for each target."""
    enforcement = snapshot.enforcement_for(call.key)
    budgets = enforcement.budgets(feature=call.feature, end_user=call.end_user)
    limits = list(enforcement.rate_limits)
    if not budgets and not limits:
        return Admission(request_id=call.request_id, second=int(call.created_at))
    unknown = rt.limits.unknown_model_max_output
    worst_usd, worst_tokens = ZERO, call.prompt_tokens
    prompt = call.prompt_tokens if estimated else None
    for target in plan.targets:
        usd, worst = worst_case(target, call.endpoint, payload, unknown, call.context_tokens, prompt)
        worst_usd, worst_tokens = max(worst_usd, usd), max(worst_tokens, worst.tokens)
    if plan.cheap is not None:
        usd, worst = worst_case(plan.cheap, call.endpoint, payload, unknown, prompt_tokens=prompt)
        worst_usd, worst_tokens = worst_usd + usd, worst_tokens + worst.tokens
    try:
        admission = await rt.limiter.admit(
            request_id=call.request_id,
            budgets=budgets,
            rate_limits=limits,
            worst_case_usd=worst_usd,
            worst_case_tokens=worst_tokens,
        )
    except (RedisError, OSError):
        if rt.limits.limits_fail_open:
            logger.warning("limits unavailable; failing open for %s", call.request_id)
            call.decision.limits_unchecked = True
            return Admission(request_id=call.request_id, second=int(call.created_at))
        raise GatewayError(
            503,
            "Budget and rate-limit checks are unavailable right now; the request was not sent.",
            type="api_error",
            code="limits_unavailable",
        ) from None
    if admission.shadow_blocked:
        call.decision.would_block = tuple(b.id for b in admission.shadow_blocked)
    return admission
