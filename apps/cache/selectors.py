"""Reads for the cache pages: entries, hit rates and the dollars the cache saved."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, TypedDict

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from apps.cache.models import CacheEntry
from apps.ledger.models import HourlyRollup, Lever
from apps.tenancy.models import Project


def cache_entries(*, project: Project, search: str = "", namespace: str | None = None) -> QuerySet[CacheEntry]:
    entries = CacheEntry.objects.filter(project=project).defer("embedding", "response")
    if search:
        entries = entries.filter(Q(prompt_text__icontains=search) | Q(model__icontains=search))
    if namespace is not None:
        entries = entries.filter(namespace=namespace)
    return entries.order_by("-hit_count", "-created_at")


class NamespaceStats(TypedDict):
    namespace: str
    entries: int
    hits: int


def cache_namespaces(*, project: Project) -> list[NamespaceStats]:
    return list(
        CacheEntry.objects.filter(project=project)
        .values("namespace")
        .annotate(entries=Count("id"), hits=Sum("hit_count"))
        .order_by("namespace")
    )


def cache_savings_by_day(*, project: Project, days: int = 14) -> list[dict[str, Any]]:
    """Per day: requests, cache hits, hit rate and dollars saved, all from the hourly roll-ups in one query.

    Saved is the cache lever's counterfactual minus its cost, the overview's "Savings by lever" figure for
    the same project and days: both read roll-ups, so the two pages never disagree while the ledger's
    newest rows wait for the next roll-up.
    """
    since = timezone.now() - dt.timedelta(days=days)
    cached = Q(lever=Lever.CACHE)
    rows = (
        HourlyRollup.objects.filter(project=project, hour__gte=since)
        .annotate(day=TruncDay("hour"))
        .values("day")
        .annotate(
            requests=Sum("requests"),
            hits=Sum("cache_hits"),
            would_have=Sum("counterfactual_cost", filter=cached),
            spent=Sum("cost", filter=cached),
        )
        .order_by("day")
    )
    return [
        {
            "day": row["day"],
            "requests": row["requests"],
            "hits": row["hits"],
            "hit_rate": (Decimal(row["hits"]) / row["requests"] * 100) if row["requests"] else Decimal(0),
            "saved": (row["would_have"] or Decimal(0)) - (row["spent"] or Decimal(0)),
        }
        for row in rows
    ]
