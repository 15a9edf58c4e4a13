"""Prune: trim a chat request as its feature's pruning policy says, right after validation.

The policy comes from the snapshot (``Snapshot.prune_policy``; opt-in per feature, see
``apps.routing.models.PrunePolicy``). What is trimmed is noted on the decision (``X-Route`` and the
ledger say ``;pruned:max_tokens(4000->300)``), and everything after this stage (route, cache key,
reservation) sees the trimmed request: the budget reserves the capped output and the shorter prompt.

- Output cap: a ``max_tokens`` or ``max_completion_tokens`` over the cap is lowered to it; a request
  asking for neither gets ``max_tokens`` set to the cap.
- History window: every system and developer message is kept, in place, and of the other messages the
  last N. A tool result whose assistant turn (the one that called the tool) falls outside the window is
  left out too, as providers refuse a tool result with no call before it.
"""

from __future__ import annotations

from typing import Any

from apps.core.request import ENDPOINT_CHAT, prompt_estimate
from apps.core.route import Pruned
from apps.core.snapshot import Snapshot
from apps.gateway.call import Call

_INSTRUCTIONS = frozenset({"system", "developer"})
_CAP_FIELDS = ("max_tokens", "max_completion_tokens")


def prune(snapshot: Snapshot, call: Call, payload: dict[str, Any]) -> None:
    """Trim ``payload`` (a validated chat request) in place as the feature's policy says."""
    if call.endpoint != ENDPOINT_CHAT:
        return
    policy = snapshot.prune_policy(call.key.project_id, call.feature)
    if policy is None:
        return
    noted: list[Pruned] = []
    if policy.max_tokens_cap is not None:
        noted.extend(_cap(payload, policy.max_tokens_cap))
    if policy.history_turns is not None:
        noted.extend(_window(payload, policy.history_turns))
    if noted:
        call.decision.pruned = tuple(noted)
        call.prompt_tokens = prompt_estimate(call.endpoint, payload)


def _cap(payload: dict[str, Any], cap: int) -> list[Pruned]:
    asked = [name for name in _CAP_FIELDS if payload.get(name) is not None]
    if not asked:
        payload["max_tokens"] = cap
        return [Pruned("max_tokens", 0, cap)]
    noted = []
    for name in asked:
        if payload[name] > cap:
            noted.append(Pruned(name, payload[name], cap))
            payload[name] = cap
    return noted


def _window(payload: dict[str, Any], turns: int) -> list[Pruned]:
    messages = payload["messages"]
    conversation = [i for i, m in enumerate(messages) if m["role"] not in _INSTRUCTIONS]
    if len(conversation) <= turns:
        return []
    first = len(conversation) - turns
    # A window must not open on tool results whose call it left out.
    while first < len(conversation) and messages[conversation[first]]["role"] in ("tool", "function"):
        first += 1
    if first == len(conversation):
        return []  # nothing but tool results in the window: sending no turn is worse than sending all
    kept = set(conversation[first:])
    trimmed = [m for i, m in enumerate(messages) if i in kept or m["role"] in _INSTRUCTIONS]
    payload["messages"] = trimmed
    return [Pruned("history", len(messages), len(trimmed))]
