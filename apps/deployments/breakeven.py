"""Break-even arithmetic: a project's API spend per model against a self-hosted deployment.

Month conventions: API figures are the observed window scaled to 30 days; a self-hosted replica
is billed 730 hours a month (365 × 24 / 12), as cloud GPU prices are.

- API monthly spend of a model = its cost in the window × 30 / days.
- Capacity of one replica = throughput (output tokens/s) × 3600 × 730 × utilisation.
- Replicas = ⌈monthly output tokens / capacity⌉, at least 1.
- Self-hosted monthly cost = hourly cost × 730 × replicas.
- Crossover: the API costs ``p`` per output token (the model's cost / its output tokens, so prompt
  tokens are priced in). One replica costs ``M = hourly × 730``; self-hosting wins from
  ``M / p`` output tokens a month, provided one replica can carry that (``p × capacity ≥ M``);
  otherwise every extra replica costs more than the API traffic it carries, and it never pays off.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from apps.core.money import usd

DAYS_PER_MONTH = Decimal(30)
HOURS_PER_MONTH = Decimal(730)
SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class Assumptions:
    days: int
    hourly_cost_usd: Decimal
    throughput_tokens_per_s: Decimal
    utilisation_percent: Decimal
    deployment_name: str = ""

    @property
    def replica_monthly_usd(self) -> Decimal:
        return self.hourly_cost_usd * HOURS_PER_MONTH

    @property
    def replica_monthly_tokens(self) -> Decimal:
        """Output tokens one replica serves in a month at the assumed utilisation."""
        return self.throughput_tokens_per_s * SECONDS_PER_HOUR * HOURS_PER_MONTH * self.utilisation_percent / 100


@dataclass(frozen=True)
class ModelUsage:
    """What a project sent to one model over the window (from the hourly roll-ups)."""

    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal


@dataclass(frozen=True)
class BreakEvenRow:
    model: str
    requests: int
    monthly_output_tokens: Decimal
    monthly_tokens: Decimal
    api_monthly_usd: Decimal
    replicas: int
    self_hosted_monthly_usd: Decimal
    # None: self-hosting never pays off at this throughput and utilisation.
    crossover_output_tokens: Decimal | None
    crossover_tokens: Decimal | None

    @property
    def monthly_saving_usd(self) -> Decimal:
        """Positive when self-hosting is cheaper."""
        return self.api_monthly_usd - self.self_hosted_monthly_usd

    @property
    def self_hosting_wins(self) -> bool:
        return self.monthly_saving_usd > 0


def _row(usage: ModelUsage, assumptions: Assumptions) -> BreakEvenRow:
    scale = DAYS_PER_MONTH / assumptions.days
    output = Decimal(usage.completion_tokens) * scale
    total = Decimal(usage.prompt_tokens + usage.completion_tokens) * scale
    api = usage.cost * scale
    capacity = assumptions.replica_monthly_tokens
    replicas = max(1, int((output / capacity).to_integral_value(rounding=ROUND_CEILING))) if capacity else 0
    crossover = crossover_total = None
    if usage.completion_tokens and usage.cost and capacity:
        per_token = usage.cost / usage.completion_tokens
        if per_token * capacity >= assumptions.replica_monthly_usd:
            crossover = assumptions.replica_monthly_usd / per_token
            crossover_total = crossover * (usage.prompt_tokens + usage.completion_tokens) / usage.completion_tokens
    return BreakEvenRow(
        model=usage.model,
        requests=usage.requests,
        monthly_output_tokens=output,
        monthly_tokens=total,
        api_monthly_usd=api,
        replicas=replicas,
        self_hosted_monthly_usd=assumptions.replica_monthly_usd * replicas,
        crossover_output_tokens=crossover,
        crossover_tokens=crossover_total,
    )


@dataclass(frozen=True)
class BreakEven:
    assumptions: Assumptions
    rows: list[BreakEvenRow]
    total: BreakEvenRow | None

    @property
    def verdict(self) -> str:
        total, a = self.total, self.assumptions
        if total is None:
            return f"No traffic in the last {a.days} days: nothing to compare."
        target = a.deployment_name or "a self-hosted deployment"
        head = (
            f"Moving all of this project's traffic ({total.monthly_output_tokens:,.0f} output tokens a month) to "
            f"{target} would cost {usd(total.self_hosted_monthly_usd, 2)} a month ({total.replicas} "
            f"replica{'s' if total.replicas != 1 else ''}) against {usd(total.api_monthly_usd, 2)} on the API"
        )
        if total.self_hosting_wins:
            return f"{head}: self-hosting saves {usd(total.monthly_saving_usd, 2)} a month."
        if total.crossover_output_tokens is None:
            return (
                f"{head}: the API stays cheaper at any volume, because one replica at {a.utilisation_percent:g}% "
                f"utilisation carries {a.replica_monthly_tokens:,.0f} output tokens a month, which cost less on "
                f"the API than its {usd(a.replica_monthly_usd, 2)}."
            )
        return (
            f"{head}: the API is cheaper by {usd(-total.monthly_saving_usd, 2)} a month; self-hosting pays off from "
            f"{total.crossover_output_tokens:,.0f} output tokens a month (about {usd(a.replica_monthly_usd, 2)} "
            f"of API spend at today's prices)."
        )


def break_even(*, usage: list[ModelUsage], assumptions: Assumptions) -> BreakEven:
    """One row per model (as if only that model moved) and a total row (everything moved together)."""
    rows = sorted((_row(u, assumptions) for u in usage), key=lambda r: (-r.api_monthly_usd, r.model))
    total = None
    if usage:
        total = _row(
            ModelUsage(
                model="All models",
                requests=sum(u.requests for u in usage),
                prompt_tokens=sum(u.prompt_tokens for u in usage),
                completion_tokens=sum(u.completion_tokens for u in usage),
                cost=sum((u.cost for u in usage), Decimal(0)),
            ),
            assumptions,
        )
    return BreakEven(assumptions=assumptions, rows=rows, total=total)
