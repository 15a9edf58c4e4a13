"""Calendar periods and the period history."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from apps.budgets.models import BudgetPeriodRecord, BudgetScope
from apps.budgets.selectors import budget_status
from apps.budgets.services import budget_create, budget_periods_record
from apps.core.periods import period_bounds
from apps.ledger.models import LedgerEntry
from tests.factories import tenant_make

UTC = dt.UTC


@pytest.mark.parametrize(
    ("period", "tz", "at", "start", "end"),
    [
        ("daily", "UTC", "2026-11-24T13:00", "2026-11-24T00:00", "2026-11-25T00:00"),
        ("daily", "Europe/Paris", "2026-11-24T23:30", "2026-11-24T23:00", "2026-11-25T23:00"),
        ("weekly", "UTC", "2026-11-26T10:00", "2026-11-23T00:00", "2026-11-30T00:00"),
        ("monthly", "UTC", "2026-12-31T23:59", "2026-12-01T00:00", "2027-01-01T00:00"),
        # New York leaves daylight saving on 2026-03-08: the month still starts at local midnight.
        ("monthly", "America/New_York", "2026-03-31T12:00", "2026-03-01T05:00", "2026-04-01T04:00"),
    ],
)
def test_period_bounds_are_calendar_aligned_in_the_budget_zone(
    period: str, tz: str, at: str, start: str, end: str
) -> None:
    bounds = period_bounds(period, tz, dt.datetime.fromisoformat(at).replace(tzinfo=UTC))
    assert bounds == (
        dt.datetime.fromisoformat(start).replace(tzinfo=UTC),
        dt.datetime.fromisoformat(end).replace(tzinfo=UTC),
    )


@pytest.mark.django_db
def test_period_history_is_recorded_idempotently() -> None:
    tenant = tenant_make()
    budget = budget_create(
        organization=tenant.org, name="daily", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal("2"), period="daily",
    )  # fmt: skip
    now = dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    for when, cost in ((now - dt.timedelta(days=1), "0.70"), (now - dt.timedelta(hours=2), "0.25")):
        LedgerEntry.objects.create(
            request_id=uuid.uuid4().hex, created_at=when, organization=tenant.org, project=tenant.project,
            endpoint="chat.completions", requested_model="gpt-4o", served_model="gpt-4o", cost=Decimal(cost),
            status_code=200,
        )  # fmt: skip
    assert budget_periods_record(now=now) == 2
    assert budget_periods_record(now=now) == 2
    records = {r.period_start.day: r for r in BudgetPeriodRecord.objects.filter(budget=budget)}
    assert set(records) == {23, 24}
    assert (records[23].spent_usd, records[23].closed) == (Decimal("0.70"), True)
    assert (records[24].spent_usd, records[24].closed) == (Decimal("0.25"), False)

    status = budget_status(budget=budget, now=now)
    assert status.spent_usd == Decimal("0.25")
    assert status.percent_used == Decimal("12.5")
    # 0.25 in 10 hours → 0.60/day → 0.25 + 0.60 * 14/24 = 0.60 projected at midnight.
    assert status.projected_usd == pytest.approx(Decimal("0.60"))
