"""Deployments of one model: the project's default provider first, then the least busy in this process."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

from apps.core.snapshot import KeyPolicy, ProjectPolicy, ProviderTarget, Snapshot
from apps.gateway.breaker import deployment
from apps.gateway.call import Call
from apps.gateway.stages.plan import Target, default_targets

KEY = KeyPolicy(
    id=1, lookup_id="abcdefgh", key_hash=b"", project_id=10, organization_id=100, allowed_models=frozenset(),
    default_feature="", expires_at=None, revoked=False,
)  # fmt: skip


def _snapshot(default_provider: int | None) -> Snapshot:
    providers = {
        pid: ProviderTarget(id=pid, name=f"p{pid}", kind="simulated", base_url="", secret="") for pid in (1, 2, 3)
    }
    project = ProjectPolicy(
        id=10, organization_id=100, team_id=None, slug="p", default_provider_id=default_provider, aliases={}
    )
    return Snapshot(
        version=1, keys={KEY.lookup_id: KEY}, projects={10: project}, providers=providers,
        org_models={100: {"gpt-4o": (1, 2, 3)}},
    )  # fmt: skip


def _order(in_flight: Counter[str], snapshot: Snapshot) -> list[int]:
    call = Call(request_id="r", endpoint="chat.completions", started=0.0, created_at=0.0, key=KEY)
    targets = default_targets(snapshot, snapshot.projects[10], "gpt-4o", dt.date.today(), call, in_flight)
    assert call.route == "direct"
    return [t.provider.id for t in targets]


def test_least_busy_deployment_first_and_the_others_as_fallbacks() -> None:
    in_flight: Counter[str] = Counter()
    in_flight[deployment(1, "gpt-4o")] = 5
    in_flight[deployment(2, "gpt-4o")] = 1
    in_flight[deployment(3, "gpt-4o")] = 3
    assert _order(in_flight, _snapshot(None)) == [2, 3, 1]
    in_flight[deployment(2, "gpt-4o")] = 9
    assert _order(in_flight, _snapshot(None)) == [3, 1, 2]


def test_the_projects_default_provider_goes_first_however_busy() -> None:
    in_flight: Counter[str] = Counter()
    in_flight[deployment(1, "gpt-4o")] = 50
    assert _order(in_flight, _snapshot(1)) == [1, 2, 3]


def test_a_model_one_provider_serves_gets_the_same_priced_target_until_the_snapshot_or_the_day_changes() -> None:
    from apps.core.pricing import PriceRow

    def priced(rate: str) -> Snapshot:
        row = PriceRow.per_mtok(effective_from=dt.date(2026, 1, 1), input_per_mtok=Decimal(rate),
                                cached_input_per_mtok=Decimal(rate), output_per_mtok=Decimal(rate))  # fmt: skip
        newer = PriceRow.per_mtok(effective_from=dt.date(2026, 6, 1), input_per_mtok=Decimal(rate) * 2,
                                  cached_input_per_mtok=Decimal(rate), output_per_mtok=Decimal(rate))  # fmt: skip
        snapshot = _snapshot(None)
        return Snapshot(version=2, keys=snapshot.keys, projects=snapshot.projects, providers=snapshot.providers,
                        org_models={100: {"mini": (2,)}}, prices={(2, "mini"): (newer, row)})  # fmt: skip

    def target(snapshot: Snapshot, day: dt.date) -> Target:
        call = Call(request_id="r", endpoint="chat.completions", started=0.0, created_at=0.0, key=KEY)
        [only] = default_targets(snapshot, snapshot.projects[10], "mini", day, call, Counter())
        assert call.route == "direct"
        return only

    first = priced("1")
    may, june = dt.date(2026, 5, 31), dt.date(2026, 6, 1)
    assert target(first, may) is target(first, may)  # made once
    assert target(first, may).price.input == Decimal(1) / 1_000_000
    assert target(first, june).price.input == Decimal(2) / 1_000_000  # the day's price, not the cached one
    again = priced("3")  # a new snapshot (a price changed): nothing made for the old one is served
    assert target(again, may).price.input == Decimal(3) / 1_000_000
