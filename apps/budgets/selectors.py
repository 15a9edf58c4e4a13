"""Reads for budgets: spend so far, burn rate, projection."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from apps.budgets.models import Alert, Budget, BudgetPeriod, BudgetScope, NotificationChannel
from apps.core.periods import FOREVER, period_bounds
from apps.ledger.models import LedgerEntry
from apps.tenancy.permissions import Action
from apps.tenancy.selectors import organizations_for, reach_q


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


_PROJECT_SCOPES = (BudgetScope.PROJECT, BudgetScope.FEATURE, BudgetScope.END_USER)


def _budget_in_team(team_id: int, prefix: str = "") -> Q:
    """Budgets placed in a team (apps/tenancy/permissions.py): on it, or on one of its projects or keys."""
    return (
        Q(**{f"{prefix}scope": BudgetScope.TEAM, f"{prefix}team_id": team_id})
        | Q(**{f"{prefix}scope__in": _PROJECT_SCOPES, f"{prefix}project__team_id": team_id})
        | Q(**{f"{prefix}scope": BudgetScope.KEY, f"{prefix}api_key__project__team_id": team_id})
    )


def _budget_below_org(prefix: str = "") -> Q:
    """Budgets that are not organisation-level: what members without a team reach."""
    return Q(**{f"{prefix}scope__in": (BudgetScope.TEAM, BudgetScope.KEY)}) | Q(
        **{f"{prefix}scope__in": _PROJECT_SCOPES, f"{prefix}project__isnull": False}
    )


def budgets_visible(*, user: User | AnonymousUser) -> QuerySet[Budget]:
    """Budgets ``user`` may read: the organisation's for owners and finance, their team's for others."""
    visible = reach_q(
        user=user, action=Action.BUDGET_VIEW, org="organization_id", team=_budget_in_team, teamless=_budget_below_org()
    )
    if visible is None:
        return Budget.objects.none()
    return Budget.objects.filter(visible).select_related("organization", "team", "project", "api_key")


def alerts_visible(*, user: User | AnonymousUser) -> QuerySet[Alert]:
    """Alerts ``user`` may read: as their budgets, and for alerts about a project, as that project."""
    visible = reach_q(
        user=user,
        action=Action.BUDGET_VIEW,
        org="organization_id",
        team=lambda t: Q(project__team_id=t) | Q(project__isnull=True) & _budget_in_team(t, "budget__"),
        teamless=Q(project__isnull=False) | Q(project__isnull=True) & _budget_below_org("budget__"),
    )
    if visible is None:
        return Alert.objects.none()
    return Alert.objects.filter(visible)


def channels_visible(*, user: User | AnonymousUser) -> QuerySet[NotificationChannel]:
    """Channels of the user's organisations; their targets are shown masked to all but owners."""
    return NotificationChannel.objects.filter(organization__in=organizations_for(user=user)).select_related(
        "organization"
    )


def budget_ledger_floors(*, now: dt.datetime) -> dict[int, dt.datetime]:
    """Per organisation, the earliest ledger instant its budgets still read: ledger retention keeps from there.

    A budget reads its current period (counter re-seeding sums it) and its previous one (the period
    history closes it); a one-off budget reads everything since it starts.
    """
    floors: dict[int, dt.datetime] = {}
    for budget in Budget.objects.only("organization_id", "period", "timezone", "starts_at"):
        start, _end = period_bounds(budget.period, budget.timezone, now, budget.starts_at)
        if budget.period != BudgetPeriod.ONE_OFF:
            start, _end = period_bounds(budget.period, budget.timezone, start - dt.timedelta(seconds=1))
        floors[budget.organization_id] = min(start, floors.get(budget.organization_id, start))
    return floors
