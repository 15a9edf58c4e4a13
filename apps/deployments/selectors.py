"""Reads for deployment pages and the break-even page."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db.models import QuerySet, Sum

from apps.deployments.breakeven import ModelUsage
from apps.deployments.models import Deployment, DeploymentRun
from apps.ledger.models import UNKNOWN_LABEL, Dimension
from apps.ledger.selectors import slice_rollups_in
from apps.tenancy.models import Organization, Project


def deployments_for(*, organization: Organization) -> QuerySet[Deployment]:
    """The organisation's deployments with their finished runs' GPU-hours and cost added up."""
    return (
        Deployment.objects.filter(organization=organization)
        .select_related("provider")
        .annotate(gpu_hours_total=Sum("runs__gpu_hours"), cost_total=Sum("runs__cost"))
        .order_by("name")
    )


def deployment_runs(*, deployment: Deployment, limit: int = 50) -> list[DeploymentRun]:
    return list(deployment.runs.order_by("-started_at")[:limit])


def model_usage(*, project: Project, since: dt.datetime, until: dt.datetime) -> list[ModelUsage]:
    """Requests, tokens and cost per served model over [since, until), from the hourly model roll-ups."""
    rows = (
        slice_rollups_in(project_ids=[project.pk], since=since, until=until, dimension=Dimension.MODEL)
        .values("value")
        .annotate(
            n=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), spent=Sum("cost")
        )
        .order_by("value")
    )
    return [
        ModelUsage(
            model=row["value"] or UNKNOWN_LABEL,
            requests=row["n"] or 0,
            prompt_tokens=row["prompt"] or 0,
            completion_tokens=row["completion"] or 0,
            cost=row["spent"] or Decimal(0),
        )
        for row in rows
    ]
