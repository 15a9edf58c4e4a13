"""Reads for routing pages and the API: rules, what each rule did, and its shadow comparison."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from apps.core.route import ESCALATED, KEPT
from apps.ledger.models import LedgerEntry
from apps.routing.models import RoutingRule, ShadowComparison
from apps.tenancy.models import Project

ZERO = Decimal(0)

# The request's own row: not a cascade's escalated cheap call ("<request id>-cheap") nor a possibly
# billed attempt ("<request id>-t<n>"), which are rows of their own (``apps.core.route``).
_ANSWER = Q(decision__part__isnull=True)


def rules_for_project(*, project: Project) -> QuerySet[RoutingRule]:
    return RoutingRule.objects.filter(project=project).prefetch_related("targets__provider").order_by("position", "id")


@dataclass(frozen=True)
class RuleStats:
    requests: int = 0
    cost: Decimal = ZERO
    counterfactual_cost: Decimal = ZERO
    escalations: int = 0
    kept: int = 0
    fallbacks: int = 0
    errors: int = 0

    @property
    def saved(self) -> Decimal:
        return self.counterfactual_cost - self.cost

    @property
    def escalation_rate(self) -> float | None:
        decided = self.escalations + self.kept
        return 100 * self.escalations / decided if decided else None


def rule_stats(*, project: Project, since: dt.datetime) -> dict[int, RuleStats]:
    """Per rule of ``project``, from the ledger since ``since``: traffic, spend, savings, escalations.

    Cost counts every call the rule made (a cascade's escalated cheap call too);
    requests count what the app sent. One grouped query over the routed rows.
    """
    rows = (
        LedgerEntry.objects.filter(project=project, route_rule__isnull=False, created_at__gte=since)
        .values("route_rule_id")
        .annotate(
            requests=Count("id", filter=_ANSWER),
            cost=Sum("cost"),
            counterfactual=Sum("counterfactual_cost"),
            escalations=Count("id", filter=_ANSWER & Q(decision__cascade=ESCALATED)),
            kept=Count("id", filter=_ANSWER & Q(decision__cascade=KEPT)),
            fallbacks=Count("id", filter=_ANSWER & Q(decision__tried__isnull=False)),
            errors=Count("id", filter=_ANSWER & Q(status_code__gte=400)),
        )
        .order_by()
    )
    return {
        row["route_rule_id"]: RuleStats(
            requests=row["requests"],
            cost=row["cost"] or ZERO,
            counterfactual_cost=row["counterfactual"] or ZERO,
            escalations=row["escalations"],
            kept=row["kept"],
            fallbacks=row["fallbacks"],
            errors=row["errors"],
        )
        for row in rows
    }


def shadow_summary_by_day(*, rule: RoutingRule, since: dt.datetime) -> list[dict[str, Any]]:
    """Per day: samples, agreement (exact / normalized / mean similarity), latency and cost side by side."""
    days = list(
        ShadowComparison.objects.filter(rule=rule, created_at__gte=since)
        .annotate(day=TruncDay("created_at"))
        .values("day")
        .annotate(
            samples=Count("id"),
            failed=Count("id", filter=~Q(shadow_status=200)),
            exact=Count("id", filter=Q(exact_match=True)),
            normalized=Count("id", filter=Q(normalized_match=True)),
            similarity=Avg("similarity"),
            primary_latency=Avg("primary_latency_ms"),
            shadow_latency=Avg("shadow_latency_ms"),
            primary_cost=Sum("primary_cost"),
            shadow_cost=Sum("shadow_cost"),
        )
        .order_by("-day")
    )
    return [{**dict(day), "agreement": 100 * day["normalized"] / day["samples"]} for day in days]


def shadow_samples(*, rule: RoutingRule, limit: int = 10) -> QuerySet[ShadowComparison]:
    """The latest comparisons that disagree, to read side by side."""
    return ShadowComparison.objects.filter(rule=rule, normalized_match=False).order_by("-created_at")[:limit]


def stats_window() -> dt.datetime:
    return timezone.now() - dt.timedelta(days=30)
