"""Trial: after the app has its answer, offer it to the project's semantic-cache trial (never waits)."""

from __future__ import annotations

from apps.gateway.call import Call
from apps.gateway.runtime import Runtime
from apps.gateway.trial_queue import TrialJob


def measuring(call: Call) -> bool:
    """Whether a semantic-cache trial wants this request's fresh answer."""
    return call.cache is not None and call.cache.policy.trial_id is not None


def offer(rt: Runtime, call: Call, text: str) -> None:
    request = call.cache
    if request is None or request.policy.trial_id is None or call.status_code != 200 or not text:
        return
    rt.trials.offer(
        TrialJob(
            request_id=call.request_id,
            created_at=call.created_at,
            trial_id=request.policy.trial_id,
            project_id=call.key.project_id,
            floor=request.policy.trial_floor,
            request=request,
            fresh_text=text,
        )
    )
