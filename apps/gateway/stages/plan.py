"""Plan the route: the project's first matching routing rule, else the requested model (or alias).

The plan is the targets in order (the first, then fallbacks), plus a cascade's
cheap model to ask first and a sampled shadow model. What was decided goes on
the call's ``RouteDecision``.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from apps.core import route
from apps.core.errors import model_not_allowed, model_not_found
from apps.core.pricing import PriceRow
from apps.core.request import ENDPOINT_CHAT, ENDPOINT_RESPONSES
from apps.core.routing import RequestFacts, RuleView, TargetView, first_match, split_order
from apps.core.snapshot import ProjectPolicy, ProviderTarget, Snapshot
from apps.gateway.breaker import deployment
from apps.gateway.call import Call


@dataclass(frozen=True, slots=True)
class Target:
    """One model on one provider, priced; ``counterfactual_price`` is what the app asked for would cost."""

    provider: ProviderTarget
    model: str
    price: PriceRow | None
    counterfactual_price: PriceRow | None


@dataclass(slots=True)
class Plan:
    """Where a request goes: targets in order (the first, then fallbacks), plus a cascade and a shadow."""

    targets: list[Target]
    rule: RuleView | None = None
    cheap: Target | None = None  # a cascade asks this one first
    shadow: Target | None = None


def plan_route(snapshot: Snapshot, call: Call, payload: dict[str, Any], in_flight: Counter[str]) -> Plan:
    """Apply the project's first matching routing rule, or serve the requested model."""
    key, requested = call.key, call.requested_model
    if key.allowed_models and requested not in key.allowed_models:
        raise model_not_allowed(requested)
    project = snapshot.projects[key.project_id]
    today = dt.datetime.fromtimestamp(call.created_at, dt.UTC).date()
    default = default_targets(snapshot, project, requested, today, call, in_flight)
    rules = snapshot.rules.get(project.id)
    rule = None
    if rules:
        facts = RequestFacts(
            model=requested,
            feature=call.feature,
            end_user=call.end_user,
            api_key_id=key.id,
            prompt_tokens=call.prompt_tokens,
            payload=payload,
        )
        rule = first_match(rules, facts)
    if rule is None:
        if not default:
            raise model_not_found(requested)
        return Plan(targets=default)

    # Without us the app would have paid for the model it asked for (if that is a model we price).
    counterfactual = default[0].counterfactual_price if default else None

    def priced(view: TargetView) -> Target:
        provider = snapshot.providers[view.provider_id]
        price = snapshot.price(provider.id, view.model, today)
        return Target(provider, view.model, price, counterfactual or price)

    decision = call.decision
    decision.kind, decision.alias, decision.rule_id, decision.action = route.RULE, "", rule.id, rule.action
    fallbacks = [priced(view) for view in rule.fallbacks]
    plan = Plan(targets=[], rule=rule)
    if rule.action == "split" and rule.primaries:
        order = split_order(rule.primaries)
        plan.targets = [priced(view) for view in order] + fallbacks
        decision.model = order[0].model
    elif rule.action == "cascade" and len(rule.primaries) >= 2:
        plan.targets = [priced(rule.primaries[1]), *fallbacks]
        if call.endpoint in (ENDPOINT_CHAT, ENDPOINT_RESPONSES):
            plan.cheap = priced(rule.primaries[0])
        else:
            decision.cascade = route.STRONG_ONLY  # confidence needs logprobs of a chat or Responses answer
    elif rule.primaries:
        plan.targets = [priced(rule.primaries[0]), *fallbacks]
    else:
        # A rule without its own model keeps the requested one (rules that only add fallbacks or a shadow).
        plan.targets = [*default, *fallbacks]
    if not plan.targets:
        raise model_not_found(requested)
    if rule.shadow is not None and rule.shadow_fraction > 0 and random.random() < rule.shadow_fraction:
        plan.shadow = priced(rule.shadow)
    return plan


def default_targets(
    snapshot: Snapshot,
    project: ProjectPolicy,
    requested: str,
    today: dt.date,
    call: Call,
    in_flight: Counter[str],
) -> list[Target]:
    """The requested model (or alias) on every provider that serves it: the first one, then fallbacks.

    The project's default provider goes first; the other deployments follow, the
    least busy in this process (``in_flight``) first.
    """
    alias = project.aliases.get(requested)
    if alias is not None:
        provider = snapshot.providers.get(alias[0])
        if provider is None:
            return []
        price = snapshot.price(provider.id, alias[1], today)
        # An alias names no model of its own: without us the app would have
        # paid for whatever it is pointed at.
        call.decision.kind, call.decision.alias = route.ALIAS, requested
        return [Target(provider, alias[1], price, price)]
    provider_ids = snapshot.org_models.get(project.organization_id, {}).get(requested)
    if not provider_ids:
        return []
    call.decision.kind = route.DIRECT
    if len(provider_ids) == 1:  # most models: one provider serves them, and its target is made once a day
        return [_sole_target(snapshot, provider_ids[0], requested, today)]
    ids = sorted(
        provider_ids, key=lambda pid: (pid != project.default_provider_id, in_flight[deployment(pid, requested)])
    )
    targets = []
    for provider_id in ids:
        price = snapshot.price(provider_id, requested, today)
        targets.append(Target(snapshot.providers[provider_id], requested, price, price))
    return targets


# The targets made for the snapshot in use, by provider, model and day; a new snapshot starts afresh.
_sole_targets: tuple[Snapshot | None, dict[tuple[int, str, dt.date], Target]] = (None, {})
_SOLE_TARGETS_MAX = 4096  # models asked for in one snapshot's life; past it the cache starts over


def _sole_target(snapshot: Snapshot, provider_id: int, model: str, today: dt.date) -> Target:
    """``model`` on the one provider that serves it, priced for ``today`` (targets are immutable: shared)."""
    global _sole_targets
    made_for, targets = _sole_targets
    if made_for is not snapshot or len(targets) >= _SOLE_TARGETS_MAX:
        made_for, targets = _sole_targets = (snapshot, {})
    target = targets.get((provider_id, model, today))
    if target is None:
        price = snapshot.price(provider_id, model, today)
        target = targets[(provider_id, model, today)] = Target(snapshot.providers[provider_id], model, price, price)
    return target
