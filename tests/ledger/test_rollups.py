"""Hourly roll-ups equal the ledger they summarise, however often they run."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db.models import Sum

from apps.ledger.models import Dimension, HourlyRollup, LedgerEntry, Lever, ProjectHourlyRollup, SliceHourlyRollup
from apps.ledger.selectors import histogram_percentile
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


@pytest.mark.django_db
def test_lever_is_read_from_the_routing_decision_first_match_wins() -> None:
    """The roll-up's lever: cache, then a cascade rule, then any other rule, then the batch endpoint, else none.

    It reads the decision, never the text: an alias or split model named "cascade" or "canary" is no lever.
    """
    tenant = tenant_make()
    base = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
    decisions: dict[str, dict[str, object] | None] = {
        "none": None,
        "direct": {"kind": "direct"},
        "alias": {"kind": "alias", "alias": "cascade"},
        "rule": {"kind": "rule", "rule_id": 1, "action": "split", "model": "canary"},
        "cascade": {"kind": "rule", "rule_id": 2, "action": "cascade", "cascade": "kept", "reason": "confidence=0.9"},
    }
    cache_hits = ["", "exact", "semantic"]
    endpoints = ["chat.completions", "batch.chat.completions", "embeddings"]
    expected = {}
    combinations = ((d, c, e) for d in decisions for c in cache_hits for e in endpoints)
    for i, (name, cache_hit, endpoint) in enumerate(combinations):
        # One feature per combination, so each lands in its own roll-up row.
        entry = _entry(tenant, base + dt.timedelta(seconds=i), "0.01", feature=f"f{i}")
        LedgerEntry.objects.filter(pk=entry.pk).update(
            decision=decisions[name], route=name, cache_hit=cache_hit, endpoint=endpoint
        )
        if cache_hit:
            expected[f"f{i}"] = Lever.CACHE
        elif name == "cascade":
            expected[f"f{i}"] = Lever.CASCADE
        elif name == "rule":
            expected[f"f{i}"] = Lever.ROUTING
        elif endpoint.startswith("batch"):
            expected[f"f{i}"] = Lever.BATCH
        else:
            expected[f"f{i}"] = Lever.NONE
    rollups_refresh()
    assert dict(HourlyRollup.objects.values_list("feature", "lever")) == expected
    assert set(expected.values()) == {lever.value for lever in Lever}


@pytest.mark.django_db
def test_rollups_split_by_end_user_and_carry_latency_and_ttft_histograms() -> None:
    tenant = tenant_make()
    base = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
    latencies = [(10, None), (30, 12), (60, 40), (90, None), (150, 80), (7000, 900)]
    for i, (latency, ttft) in enumerate(latencies):
        entry = _entry(tenant, base + dt.timedelta(minutes=i), "0.01")
        LedgerEntry.objects.filter(pk=entry.pk).update(
            latency_ms=latency, ttft_ms=ttft, end_user="alice" if i % 2 else "bob"
        )
    rollups_refresh()
    rows = {row.end_user: row for row in HourlyRollup.objects.all()}
    assert set(rows) == {"alice", "bob"}
    merged = [a + b for a, b in zip(rows["alice"].latency_hist, rows["bob"].latency_hist, strict=True)]
    # Buckets start at 0, 25, 50, 100, 200, …, 6400 ms.
    assert merged == [1, 1, 2, 1, 0, 0, 0, 0, 0, 1]
    assert sum(r.ttft_count for r in rows.values()) == 4
    assert sum(r.ttft_ms_sum for r in rows.values()) == 12 + 40 + 80 + 900
    ttft = [a + b for a, b in zip(rows["alice"].ttft_hist, rows["bob"].ttft_hist, strict=True)]
    assert ttft == [1, 1, 1, 0, 0, 0, 1, 0, 0, 0]
    assert sum(r.latency_ms_sum for r in rows.values()) == sum(lat for lat, _ in latencies)
    rollups_refresh()
    assert HourlyRollup.objects.count() == 2


def _narrow_rollups() -> tuple[dict, dict]:  # type: ignore[type-arg]
    projects = {
        (row.project_id, row.hour): (row.requests, row.errors, row.cache_hits, row.cost, row.counterfactual_cost,
                                     row.latency_ms_sum, row.latency_hist, row.ttft_count)
        for row in ProjectHourlyRollup.objects.all()
    }  # fmt: skip
    slices = {
        (row.project_id, row.hour, row.dimension, row.value, row.api_key_id): (row.requests, row.cost)
        for row in SliceHourlyRollup.objects.all()
    }
    return projects, slices


@pytest.mark.django_db
def test_project_and_dimension_rollups_equal_the_ledger_and_are_idempotent() -> None:
    tenant, other = tenant_make(), tenant_make()
    base = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
    _entry(tenant, base + dt.timedelta(minutes=1), "0.10")
    second = _entry(tenant, base + dt.timedelta(minutes=2), "0.20", feature="b", status=500)
    LedgerEntry.objects.filter(pk=second.pk).update(
        end_user="alice", served_model="gpt-4o-mini", api_key=None, cache_hit="exact", latency_ms=70, ttft_ms=30
    )
    _entry(tenant, base + dt.timedelta(hours=1, minutes=5), "0.40")
    _entry(other, base + dt.timedelta(minutes=3), "1.00")
    rollups_refresh()

    projects, slices = _narrow_rollups()
    latency_hist = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # 5 ms and 70 ms
    assert projects[(tenant.project.pk, base)] == (2, 1, 1, Decimal("0.30"), Decimal("0.60"), 75, latency_hist, 1)
    assert projects[(other.project.pk, base)][3] == Decimal("1.00")
    assert projects[(tenant.project.pk, base + dt.timedelta(hours=1))][3] == Decimal("0.40")
    key = tenant.key.api_key.pk
    mine = {k[2:]: v for k, v in slices.items() if k[:2] == (tenant.project.pk, base)}
    assert mine == {
        (Dimension.MODEL, "gpt-4o", None): (1, Decimal("0.10")),
        (Dimension.MODEL, "gpt-4o-mini", None): (1, Decimal("0.20")),
        (Dimension.FEATURE, "a", None): (1, Decimal("0.10")),
        (Dimension.FEATURE, "b", None): (1, Decimal("0.20")),
        (Dimension.KEY, "", key): (1, Decimal("0.10")),
        (Dimension.KEY, "", None): (1, Decimal("0.20")),
        (Dimension.END_USER, "", None): (1, Decimal("0.10")),
        (Dimension.END_USER, "alice", None): (1, Decimal("0.20")),
        (Dimension.LEVER, Lever.NONE, None): (1, Decimal("0.10")),
        (Dimension.LEVER, Lever.CACHE, None): (1, Decimal("0.20")),
        (Dimension.VENDOR, "OpenAI", None): (2, Decimal("0.30")),  # the simulator stands in for OpenAI
        (Dimension.ENDPOINT, "chat.completions", None): (2, Decimal("0.30")),
    }
    assert slices[(other.project.pk, base, Dimension.MODEL, "gpt-4o", None)] == (1, Decimal("1.00"))
    # Every dimension splits the same hour into parts that add up to the project's total.
    for dimension in Dimension:
        parts = SliceHourlyRollup.objects.filter(project=tenant.project, hour=base, dimension=dimension)
        assert parts.aggregate(s=Sum("cost"))["s"] == Decimal("0.30"), dimension

    rollups_refresh()
    assert _narrow_rollups() == (projects, slices)
    _entry(tenant, base + dt.timedelta(minutes=30), "0.05")  # a late row in an old hour
    rollups_refresh()
    assert ProjectHourlyRollup.objects.get(project=tenant.project, hour=base).cost == Decimal("0.35")
    assert SliceHourlyRollup.objects.get(
        project=tenant.project, hour=base, dimension=Dimension.FEATURE, value="a"
    ).cost == Decimal("0.15")


def test_histogram_percentile_interpolates_within_a_bucket() -> None:
    # 100 requests, all in [100, 200): the median sits half-way through that bucket.
    counts = [0, 0, 0, 100, 0, 0, 0, 0, 0, 0]
    assert histogram_percentile(counts, 0.5) == 150
    assert histogram_percentile(counts, 0.95) == 195
    assert histogram_percentile([0] * 10, 0.5) is None
    # Beyond the last edge the estimate is a floor.
    assert histogram_percentile([0] * 9 + [3], 0.95) == 6400
