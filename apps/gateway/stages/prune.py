"""Prune: trim a chat or Responses request as its feature's pruning policy says, right after validation.

The policy comes from the snapshot (``Snapshot.prune_policy``; opt-in per feature, see
``apps.routing.models.PrunePolicy``). What is trimmed is noted on the decision (``X-Route`` and the
ledger say ``;pruned:max_tokens(4000->300)``), and everything after this stage (route, cache key,
reservation) sees the trimmed request: the budget reserves the capped output and the shorter prompt.

- Output cap: a ``max_tokens`` or ``max_completion_tokens`` over the cap is lowered to it; a request
  asking for neither gets ``max_tokens`` set to the cap.
- History window: every system and developer message is kept, in place, and of the other messages the
  last N. A tool result whose assistant turn (the one that called the tool) falls outside the window is
  left out too, as providers refuse a tool result with no call before it.

On ``/v1/responses`` the cap is on ``max_output_tokens`` (never below 16, the least the Responses API
accepts) and the window on the ``input`` items: system and developer messages kept, of the other items
(messages, function calls and their outputs, reasoning items) the last N, never opening on a
``function_call_output`` whose call it left out, and taking along the reasoning item right before the
first kept one (a provider refuses a function call without its reasoning). A continuation
(``previous_response_id``) gets the cap but no window: its earlier turns are not in ``input`` (the
provider holds them, or we do for a Chat-only provider, and they are sent whole), so a window on
``input`` would cut the new turn and leave the history as it is.
"""

from __future__ import annotations

from typing import Any

from apps.core.request import ENDPOINT_CHAT, ENDPOINT_RESPONSES, prompt_estimate
from apps.core.route import Pruned
from apps.core.snapshot import Snapshot
from apps.gateway.call import Call

_INSTRUCTIONS = frozenset({"system", "developer"})
_CAP_FIELDS = ("max_tokens", "max_completion_tokens")
RESPONSES_MIN_OUTPUT = 16  # the least max_output_tokens the Responses API accepts


def prune(snapshot: Snapshot, call: Call, payload: dict[str, Any]) -> None:
    """Trim ``payload`` (a validated chat or Responses request) in place as the feature's policy says."""
    if call.endpoint not in (ENDPOINT_CHAT, ENDPOINT_RESPONSES):
        return
    policy = snapshot.prune_policy(call.key.project_id, call.feature)
    if policy is None:
        return
    noted: list[Pruned] = []
    responses = call.endpoint == ENDPOINT_RESPONSES
    if policy.max_tokens_cap is not None:
        if responses:
            noted.extend(_cap_output(payload, max(policy.max_tokens_cap, RESPONSES_MIN_OUTPUT)))
        else:
            noted.extend(_cap(payload, policy.max_tokens_cap))
    if policy.history_turns is not None:
        if not responses:
            noted.extend(window(payload, policy.history_turns))
        elif payload.get("previous_response_id") is None and isinstance(payload["input"], list):
            noted.extend(_window_items(payload, policy.history_turns))
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


def window(payload: dict[str, Any], turns: int) -> list[Pruned]:
    """Keep ``payload``'s system and developer messages and its last ``turns`` others (a new list; the
    message objects are shared); what was trimmed, or nothing when the window changes nothing."""
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


def _cap_output(payload: dict[str, Any], cap: int) -> list[Pruned]:
    asked = payload.get("max_output_tokens")
    if asked is not None and asked <= cap:
        return []
    payload["max_output_tokens"] = cap
    return [Pruned("max_output_tokens", asked or 0, cap)]


def _window_items(payload: dict[str, Any], turns: int) -> list[Pruned]:
    items = payload["input"]
    conversation = [i for i, item in enumerate(items) if not _instruction(item)]
    if len(conversation) <= turns:
        return []
    first = len(conversation) - turns
    while first < len(conversation) and items[conversation[first]].get("type") == "function_call_output":
        first += 1
    if first == len(conversation):
        return []  # nothing but tool results in the window: sending no turn is worse than sending all
    kept = set(conversation[first:])
    before = conversation[first] - 1
    if before >= 0 and items[before].get("type") == "reasoning":
        kept.add(before)
    trimmed = [item for i, item in enumerate(items) if i in kept or _instruction(item)]
    payload["input"] = trimmed
    return [Pruned("history", len(items), len(trimmed))]


def _instruction(item: dict[str, Any]) -> bool:
    return item.get("type", "message") == "message" and item.get("role") in _INSTRUCTIONS
