"""Reads for the overview page: one organisation or project, one date range, all from roll-ups."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q

from apps.budgets.models import Alert, AlertKind, Budget, BudgetScope
from apps.budgets.selectors import BudgetStatus, alerts_visible, budget_statuses, budgets_visible
from apps.ledger.selectors import (
    GROUP_BY_FIELDS,
    LatencyPercentiles,
    LeverTotals,
    RollupSummary,
    SpendSeries,
    TopRow,
    ledger_percentiles,
    rollup_summary,
    rollup_top,
    savings_by_lever,
    spend_by_project,
    spend_series,
)
from apps.tenancy.models import Organization, Project
from apps.tenancy.selectors import organizations_for, projects_for

# Ranges up to this long are charted per hour, longer ones per day.
HOURLY_UP_TO = dt.timedelta(days=2)
TOP_N = 8
LATEST_ALERTS = 5


@dataclass(frozen=True)
class OverviewScope:
    """What the overview covers: a whole organisation (the projects the user sees in it) or one project."""

    organization: Organization
    project: Project | None
    project_ids: list[int] = field(default_factory=list)

    @property
    def value(self) -> str:
        return f"project:{self.project.slug}" if self.project else f"org:{self.organization.slug}"

    @property
    def label(self) -> str:
        if self.project:
            return f"{self.organization.name} / {self.project.name}"
        return f"{self.organization.name} — all projects"


def overview_scopes(*, user: User | AnonymousUser) -> list[OverviewScope]:
    """Every scope ``user`` may look at, each organisation followed by its projects."""
    projects = list(projects_for(user=user))
    scopes = []
    for org in organizations_for(user=user):
        own = [p for p in projects if p.organization_id == org.pk]
        scopes.append(OverviewScope(organization=org, project=None, project_ids=[p.pk for p in own]))
        scopes.extend(OverviewScope(organization=org, project=p, project_ids=[p.pk]) for p in own)
    return scopes


def bucket_for(*, since: dt.datetime, until: dt.datetime) -> str:
    return "hour" if until - since <= HOURLY_UP_TO else "day"


@dataclass(frozen=True)
class Overview:
    scope: OverviewScope
    since: dt.datetime
    until: dt.datetime
    group_by: str
    series: SpendSeries
    summary: RollupSummary
    latency: LatencyPercentiles
    levers: list[LeverTotals]
    top: dict[str, list[TopRow]]
    spend_today: Decimal
    spend_month: Decimal
    budgets: list[BudgetStatus]
    alerts: list[Alert]
    dead_letters: int  # the organisation's events the ingest could not store, in the period (see Alert data)

    @property
    def savings(self) -> Decimal:
        return sum((lever.savings for lever in self.levers), Decimal(0))


def _budgets_for(user: User | AnonymousUser, scope: OverviewScope) -> list[Budget]:
    """Active budgets the user may read that count spend of the scope: the whole org's, or those covering
    the project."""
    budgets = budgets_visible(user=user).filter(organization=scope.organization, is_active=True)
    if scope.project is not None:
        covers = Q(scope=BudgetScope.ORGANIZATION) | Q(project=scope.project)
        if scope.project.team_id is not None:
            covers |= Q(scope=BudgetScope.TEAM, team_id=scope.project.team_id)
        budgets = budgets.filter(covers)
    return list(budgets.select_related("organization", "team", "project", "api_key").order_by("name"))


def _alerts_for(user: User | AnonymousUser, scope: OverviewScope) -> list[Alert]:
    alerts = alerts_visible(user=user).filter(organization=scope.organization)
    if scope.project is not None:
        alerts = alerts.filter(Q(project=scope.project) | Q(project__isnull=True))
    return list(alerts.select_related("project").order_by("-created_at")[:LATEST_ALERTS])


def _dead_letters_for(scope: OverviewScope, since: dt.datetime, until: dt.datetime) -> int:
    """How many of the organisation's events went to a dead-letter stream in the period (one alert a day)."""
    counts = Alert.objects.filter(
        organization=scope.organization,
        kind=AlertKind.DEAD_LETTER,
        created_at__gte=since - dt.timedelta(days=1),
        created_at__lt=until,
    ).values_list("data", flat=True)
    return sum(int(data.get("count") or 0) for data in counts if isinstance(data, dict))


def overview_for(
    *, user: User | AnonymousUser, scope: OverviewScope, since: dt.datetime, until: dt.datetime, group_by: str
) -> Overview:
    """Everything the overview shows, in a fixed number of queries whatever the traffic."""
    ids = scope.project_ids
    window: dict[str, Any] = {"project_ids": ids, "since": since, "until": until}
    spend = spend_by_project(project_ids=ids).values()
    return Overview(
        scope=scope,
        since=since,
        until=until,
        group_by=group_by,
        series=spend_series(**window, group_by=group_by, bucket=bucket_for(since=since, until=until)),
        summary=rollup_summary(**window),
        latency=ledger_percentiles(**window),
        levers=savings_by_lever(**window),
        top={name: rollup_top(**window, group_by=name, limit=TOP_N) for name in GROUP_BY_FIELDS},
        spend_today=sum((s.today for s in spend), Decimal(0)),
        spend_month=sum((s.month for s in spend), Decimal(0)),
        budgets=budget_statuses(budgets=_budgets_for(user, scope)),
        alerts=_alerts_for(user, scope),
        dead_letters=_dead_letters_for(scope, since, until),
    )
