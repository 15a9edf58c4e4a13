"""Reads for budgets: spend so far, burn rate, projection."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from apps.budgets.models import Budget, BudgetScope
from apps.budgets.periods import FOREVER, period_bounds
from apps.ledger.models import LedgerEntry


def budget_ledger_filter(*, budget: Budget) -> Q:
    """The ledger rows a budget counts (same matching as the gateway's BudgetPolicy.applies)."""
    q = Q(organization_id=budget.organization_id)
    if budget.scope == BudgetScope.TEAM:
        q &= Q(project__team_id=budget.team_id)
    elif budget.scope == BudgetScope.PROJECT:
        q &= Q(project_id=budget.project_id)
    elif budget.scope == BudgetScope.KEY:
        q &= Q(api_key_id=budget.api_key_id)
    elif budget.scope in (BudgetScope.FEATURE, BudgetScope.END_USER):
        q &= Q(feature=budget.feature) if budget.scope == BudgetScope.FEATURE else Q(end_user=budget.end_user)
        if budget.project_id:
            q &= Q(project_id=budget.project_id)
    return q


def budget_spent_usd(*, budget: Budget, since: dt.datetime, until: dt.datetime | None = None) -> Decimal:
    rows = LedgerEntry.objects.filter(budget_ledger_filter(budget=budget), created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    return rows.aggregate(total=Sum("cost"))["total"] or Decimal(0)


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: dt.datetime
    period_end: dt.datetime | None
    spent_usd: Decimal
    percent_used: Decimal
    burn_usd_per_day: Decimal
    projected_usd: Decimal | None  # at period end, at the current burn rate


def budget_status(*, budget: Budget, now: dt.datetime | None = None) -> BudgetStatus:
    now = now or timezone.now()
    bounds = period_bounds(budget.period, budget.timezone, now, budget.starts_at)
    return _status(budget, bounds, budget_spent_usd(budget=budget, since=bounds[0]), now)


def budget_statuses(*, budgets: list[Budget], now: dt.datetime | None = None) -> list[BudgetStatus]:
    """Status of many budgets with one aggregate query over the ledger."""
    if not budgets:
        return []
    now = now or timezone.now()
    bounds = {b.id: period_bounds(b.period, b.timezone, now, b.starts_at) for b in budgets}
    earliest = min(start for start, _end in bounds.values())
    sums = LedgerEntry.objects.filter(
        organization_id__in={b.organization_id for b in budgets}, created_at__gte=earliest
    ).aggregate(
        **{
            f"b{b.id}": Sum("cost", filter=budget_ledger_filter(budget=b) & Q(created_at__gte=bounds[b.id][0]))
            for b in budgets
        }
    )
    return [_status(b, bounds[b.id], sums[f"b{b.id}"] or Decimal(0), now) for b in budgets]


def _status(budget: Budget, bounds: tuple[dt.datetime, dt.datetime], spent: Decimal, now: dt.datetime) -> BudgetStatus:
    start, end = bounds
    elapsed_days = Decimal(max((now - start).total_seconds(), 60)) / Decimal(86400)
    burn = spent / elapsed_days
    projected = None
    if end != FOREVER:
        projected = spent + burn * Decimal((end - now).total_seconds()) / Decimal(86400)
    percent = (spent / budget.amount_usd * 100) if budget.amount_usd else Decimal(0)
    return BudgetStatus(
        budget=budget,
        period_start=start,
        period_end=None if end == FOREVER else end,
        spent_usd=spent,
        percent_used=percent,
        burn_usd_per_day=burn,
        projected_usd=projected,
    )


def budgets_for_organizations(*, organization_ids: list[int]) -> QuerySet[Budget]:
    return (
        Budget.objects.filter(organization_id__in=organization_ids)
        .select_related("organization", "team", "project", "api_key")
        .order_by("organization__name", "name")
    )
