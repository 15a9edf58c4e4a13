"""The monthly report: spend by project, model and feature, gateway against imported."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from decimal import Decimal

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import F, QuerySet, Sum

from apps.ledger.models import HourlyRollup, LedgerEntry, Source
from apps.reports.models import ExportJob
from apps.tenancy.models import Organization, Project
from apps.tenancy.selectors import projects_for

ZERO = Decimal(0)


def visible_projects(
    *, user: User | AnonymousUser, organization: Organization, project_slug: str = ""
) -> QuerySet[Project]:
    """The organisation's projects ``user`` may see (all for owners and finance, a team's for developers)."""
    projects = projects_for(user=user).filter(organization=organization)
    if project_slug:
        projects = projects.filter(slug=project_slug)
    return projects


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Start of ``month`` and of the next one, UTC."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    following = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, following


@dataclass(frozen=True)
class SpendLine:
    """Spend of one slice (a project, a model, a feature) over the report's range."""

    key: str
    label: str
    requests: int
    tokens: int
    cost: Decimal
    counterfactual: Decimal
    imported_cost: Decimal = ZERO

    @property
    def savings(self) -> Decimal:
        return self.counterfactual - self.cost

    @property
    def gateway_cost(self) -> Decimal:
        return self.cost - self.imported_cost


@dataclass(frozen=True)
class MonthlyReport:
    since: dt.datetime
    until: dt.datetime
    by_project: list[SpendLine]
    by_model: list[SpendLine]
    by_feature: list[SpendLine]
    totals: SpendLine
    share_imported: float = field(default=0.0)


def _rollup_lines(rows: QuerySet[HourlyRollup], key: str, label: str | None = None) -> list[SpendLine]:
    grouped = (
        rows.values(*{key, label or key})
        .annotate(
            total_requests=Sum("requests"),
            total_tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            total_cost=Sum("cost"),
            total_counterfactual=Sum("counterfactual_cost"),
        )
        .order_by("-total_cost", key)
    )
    return [
        SpendLine(
            key=str(row[key]),
            label=str(row[label or key]),
            requests=row["total_requests"] or 0,
            tokens=row["total_tokens"] or 0,
            cost=row["total_cost"] or ZERO,
            counterfactual=row["total_counterfactual"] or ZERO,
        )
        for row in grouped
    ]


def spend_report(
    *, organization: Organization, projects: QuerySet[Project], since: dt.datetime, until: dt.datetime
) -> MonthlyReport:
    """Spend by project, model and feature from ``since`` to ``until`` (a month by default, or the days the
    report's date-range picker chose), from the hourly roll-ups; four queries.

    Roll-ups do not record where a row came from, so imported spend is read
    from the ledger, restricted to imported rows (few: one per day and model
    of an imported usage file).
    """
    rollups = HourlyRollup.objects.filter(
        organization=organization, project__in=projects.values("pk"), hour__gte=since, hour__lt=until
    )
    imported = dict(
        LedgerEntry.objects.filter(
            organization=organization,
            project__in=projects.values("pk"),
            source=Source.IMPORTED,
            created_at__gte=since,
            created_at__lt=until,
        )
        .values("project__slug")
        .annotate(total=Sum("cost"))
        .order_by()
        .values_list("project__slug", "total")
    )
    by_project = [
        replace(line, imported_cost=imported.get(line.key) or ZERO)
        for line in _rollup_lines(rollups, "project__slug", "project__name")
    ]
    totals = SpendLine(
        key="total",
        label="Total",
        requests=sum(line.requests for line in by_project),
        tokens=sum(line.tokens for line in by_project),
        cost=sum((line.cost for line in by_project), ZERO),
        counterfactual=sum((line.counterfactual for line in by_project), ZERO),
        imported_cost=sum((line.imported_cost for line in by_project), ZERO),
    )
    return MonthlyReport(
        since=since,
        until=until,
        by_project=by_project,
        by_model=_rollup_lines(rollups, "served_model"),
        by_feature=_rollup_lines(rollups, "feature"),
        totals=totals,
        share_imported=float(totals.imported_cost / totals.cost) if totals.cost else 0.0,
    )


def recent_export_jobs(*, user: User | AnonymousUser, organization: Organization, limit: int = 5) -> list[ExportJob]:
    if not user.is_authenticated:
        return []
    return list(ExportJob.objects.filter(requested_by=user, organization=organization).order_by("-created_at")[:limit])
