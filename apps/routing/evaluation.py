"""Replay a labelled dataset through a routing rule and against an all-strong baseline.

Used by ``manage.py eval_route``: each example (``{"messages": [...], "expected": "..."}``)
is sent to the rule's models the way the gateway would (a cascade asks the cheap
model with logprobs and escalates below the threshold or on an unknown label),
and to the baseline model. Answers are right when they equal the expected
label after ``normalize_text``. Calls go straight to the configured providers
with the official SDK; nothing is written to the ledger.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai

from apps.core.routing import answer_confidence, normalize_text, split_order
from apps.core.text import answer_text
from apps.providers.models import Price
from apps.routing.models import RoutingRule, RuleAction, TargetRole
from apps.routing.services import TargetSpec
from costcontrol.egress import egress_http_client

ZERO = Decimal(0)


@dataclass
class Tally:
    examples: int = 0
    correct: int = 0
    cost: Decimal = ZERO
    escalated: int = 0
    failed: int = 0

    @property
    def accuracy(self) -> float:
        return 100 * self.correct / self.examples if self.examples else 0.0


@dataclass
class Evaluation:
    rule: RoutingRule
    baseline: TargetSpec
    routed: Tally = field(default_factory=Tally)
    strong: Tally = field(default_factory=Tally)
    served: dict[str, int] = field(default_factory=dict)


class _Caller:
    """One SDK client per provider; prices looked up once per model."""

    def __init__(self) -> None:
        self._clients: dict[int, openai.OpenAI] = {}
        self._prices: dict[tuple[int, str], Price | None] = {}

    def ask(self, target: TargetSpec, messages: list[dict[str, Any]], **extra: Any) -> tuple[dict[str, Any], Decimal]:
        provider = target.provider
        client = self._clients.get(provider.id)
        if client is None:
            client = openai.OpenAI(
                base_url=provider.base_url,
                api_key=provider.secret or "none",
                max_retries=2,
                http_client=egress_http_client(timeout=600),
            )
            self._clients[provider.id] = client
        completion = client.chat.completions.create(model=target.model, messages=messages, **extra)  # type: ignore[arg-type]
        data = completion.model_dump()
        return data, self._cost(target, data.get("usage") or {})

    def _cost(self, target: TargetSpec, usage: dict[str, Any]) -> Decimal:
        key = (target.provider.id, target.model)
        if key not in self._prices:
            self._prices[key] = (
                Price.objects.filter(provider_id=key[0], model=key[1], effective_from__lte=dt.date.today())
                .order_by("-effective_from")
                .first()
            )
        price = self._prices[key]
        if price is None:
            return ZERO
        return price.cost(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


def rule_targets(rule: RoutingRule) -> list[TargetSpec]:
    return [
        TargetSpec(provider=t.provider, model=t.model, weight=t.weight)
        for t in rule.targets.select_related("provider").filter(role=TargetRole.PRIMARY).order_by("position", "id")
    ]


def evaluate(
    *, rule: RoutingRule, baseline: TargetSpec, examples: Iterable[dict[str, Any]], seed: int = 0
) -> Evaluation:
    primaries = rule_targets(rule)
    labels = {normalize_text(label) for label in rule.cascade_labels}
    rng = random.Random(seed)
    caller = _Caller()
    result = Evaluation(rule=rule, baseline=baseline)
    for example in examples:
        messages, expected = example["messages"], normalize_text(str(example["expected"]))
        result.routed.examples += 1
        result.strong.examples += 1

        answer, served = "", ""
        try:
            if rule.action == RuleAction.CASCADE:
                cheap, strong = primaries[0], primaries[1]
                data, cost = caller.ask(cheap, messages, logprobs=True)
                result.routed.cost += cost
                score = answer_confidence(data, tokens=rule.cascade_tokens, aggregate=rule.cascade_aggregate)
                label = normalize_text(answer_text(data))
                unknown = rule.cascade_escalate_new_labels and label not in labels
                if score is None or score < float(rule.cascade_threshold) or unknown:
                    result.routed.escalated += 1
                    data, cost = caller.ask(strong, messages)
                    result.routed.cost += cost
                    served = strong.model
                    labels.add(normalize_text(answer_text(data)))  # the gateway learns the strong model's labels too
                else:
                    served = cheap.model
            else:
                views = primaries if rule.action == RuleAction.SPLIT else primaries[:1]
                target = _split_pick(views, rng) if rule.action == RuleAction.SPLIT else views[0]
                data, cost = caller.ask(target, messages)
                result.routed.cost += cost
                served = target.model
            answer = normalize_text(answer_text(data))
        except openai.OpenAIError:
            result.routed.failed += 1
        result.served[served or "(failed)"] = result.served.get(served or "(failed)", 0) + 1
        result.routed.correct += answer == expected

        try:
            data, cost = caller.ask(baseline, messages)
            result.strong.cost += cost
            result.strong.correct += normalize_text(answer_text(data)) == expected
        except openai.OpenAIError:
            result.strong.failed += 1
    return result


def _split_pick(targets: list[TargetSpec], rng: random.Random) -> TargetSpec:
    from apps.core.routing import TargetView

    views = [TargetView(i, t.model, t.weight) for i, t in enumerate(targets)]
    return targets[split_order(views, rng)[0].provider_id]


def report(result: Evaluation) -> list[str]:
    """The comparison as printable lines."""
    rule, routed, strong = result.rule, result.routed, result.strong
    lines = [
        f"rule {rule.id} “{rule.name}” ({rule.get_action_display()})",
        f"examples: {routed.examples}",
        "",
        f"{'':24}{'accuracy':>10}{'cost (USD)':>14}{'escalated':>14}{'failed':>8}",
    ]
    escalation = f"{100 * routed.escalated / routed.examples:.1f}%" if rule.action == RuleAction.CASCADE else "—"
    lines.append(
        f"{'through the rule':24}{routed.accuracy:>9.1f}%{routed.cost:>14.6f}{escalation:>14}{routed.failed:>8}"
    )
    label = f"all {result.baseline.model}"
    lines.append(f"{label:24}{strong.accuracy:>9.1f}%{strong.cost:>14.6f}{'—':>14}{strong.failed:>8}")
    saving = 100 * (1 - routed.cost / strong.cost) if strong.cost else 0.0
    lines.append(f"{'difference':24}{routed.accuracy - strong.accuracy:>+8.1f}pt{-saving:>+13.1f}%")
    lines.append("")
    lines.append("answers served by: " + ", ".join(f"{m} {n}" for m, n in sorted(result.served.items())))
    return lines
