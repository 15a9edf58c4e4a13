"""Hourly roll-ups equal the ledger they summarise, however often they run."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db.models import Sum

from apps.ledger.models import HourlyRollup, LedgerEntry
from apps.ledger.services import rollups_refresh
from tests.factories import tenant_make


def _entry(tenant, when: dt.datetime, cost: str, feature: str = "a", status: int = 200) -> LedgerEntry:  # type: ignore[no-untyped-def]
    return LedgerEntry.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=when,
        organization=tenant.org,
        project=tenant.project,
        api_key=tenant.key.api_key,
        provider=tenant.provider,
        endpoint="chat.completions",
        feature=feature,
        requested_model="gpt-4o",
        served_model="gpt-4o",
        prompt_tokens=100,
        completion_tokens=10,
        cost=Decimal(cost),
        counterfactual_cost=Decimal(cost) * 2,
        latency_ms=5,
        status_code=status,
    )


@pytest.mark.django_db
def test_rollups_match_ledger_and_are_idempotent() -> None:
    tenant = tenant_make()
    base = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
    _entry(tenant, base + dt.timedelta(minutes=1), "0.10")
    _entry(tenant, base + dt.timedelta(minutes=59), "0.20", feature="b")
    _entry(tenant, base + dt.timedelta(hours=1, minutes=5), "0.40", status=500)

    assert rollups_refresh() == 2
    assert rollups_refresh() == 2  # the overlap window re-does recent hours; totals must not change
    totals = HourlyRollup.objects.aggregate(cost=Sum("cost"), requests=Sum("requests"), errors=Sum("errors"))
    assert totals == {"cost": Decimal("0.70"), "requests": 3, "errors": 1}
    first_hour = HourlyRollup.objects.filter(hour=base)
    assert first_hour.count() == 2  # features a and b
    assert HourlyRollup.objects.get(hour=base, feature="b").counterfactual_cost == Decimal("0.40")

    _entry(tenant, base + dt.timedelta(minutes=30), "0.05")  # a late row in an old hour
    rollups_refresh()
    assert HourlyRollup.objects.get(hour=base, feature="a").cost == Decimal("0.15")
