"""Trials through the API and the page: apply in shadow, enable refused then allowed, roles, garbage,
the semantic precision curve, the trial stream's consumer and the daily cap."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from django.conf import settings
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.cache.models import CachePolicy
from apps.core import names
from apps.core.events import EVENT_FIELD
from apps.dashboard.services import api_token_rotate
from apps.ledger.stream import GROUP
from apps.opportunities.models import Lever, Trial, TrialSample, TrialState
from apps.opportunities.selectors import Opportunity
from apps.opportunities.services import trial_ingest_batch, trial_start, trial_stream, trials_hold_caps
from apps.opportunities.trial_selectors import trial_measured
from apps.routing.models import ShadowComparison, TargetRole
from apps.tenancy.models import Role
from tests.factories import People, Tenant, entry_make, login, member_make
from tests.opportunities.test_opportunities import _prices, _row

pytestmark = pytest.mark.django_db


def _api(user: Any) -> Client:
    client = Client()
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {api_token_rotate(user=user).key}"
    return client


def _post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, json.dumps(body), content_type="application/json")


def _route_recommendation(tenant: Tenant) -> str:
    """A route recommendation (big → small) for the faq feature, read from the API."""
    _prices(tenant)
    for i in range(4):
        _row(tenant, minutes_ago=i + 1, cache_key=f"{i:064d}")
    body = _api(tenant.owner).get(f"/api/projects/{tenant.project.slug}/opportunities/?days=1").json()
    [route] = [o for o in body["opportunities"] if o["lever"] == "route"]
    return str(route["id"])


def _apply_url(tenant: Tenant, rid: str) -> str:
    return f"/api/projects/{tenant.project.slug}/opportunities/{rid}/apply"


_ids = itertools.count()


def _comparisons(trial: Trial, *, agree: int, disagree: int = 0, cost: str = "0.001") -> None:
    assert trial.rule is not None
    ShadowComparison.objects.bulk_create(
        ShadowComparison(
            request_id=f"cmp-{next(_ids)}",
            created_at=timezone.now(),
            rule=trial.rule,
            project=trial.project,
            primary_model="big",
            shadow_model="small",
            primary_latency_ms=5,
            shadow_latency_ms=5,
            primary_cost=Decimal("0.01"),
            shadow_cost=Decimal(cost),
            shadow_status=200,
            exact_match=i < agree,
            normalized_match=i < agree,
            primary_text="a",
            shadow_text="a" if i < agree else "b",
        )  # fmt: skip
        for i in range(agree + disagree)
    )


def test_route_trial_starts_in_shadow_is_refused_before_its_target_and_enabled_after(people: People) -> None:
    tenant = people.tenant
    rid = _route_recommendation(tenant)
    owner = _api(people.owner)

    started = _post(owner, _apply_url(tenant, rid), {"mode": "shadow", "quality_target": 0.99, "min_samples": 10,
                                                     "days": 1, "daily_cap_usd": "2.50"})  # fmt: skip
    assert started.status_code == 201, started.content
    body = started.json()
    assert body["state"] == "shadow" and body["lever"] == "route" and body["daily_cap_usd"] == "2.50"
    assert body["parameters"] == {"from_model": "big", "to_model": "small"}
    trial = Trial.objects.get(pk=body["id"])
    rule = trial.rule
    assert rule is not None and rule.shadow_percent == 100 and rule.match_features == ["faq"]
    roles = {t.role: t.model for t in rule.targets.all()}
    assert roles == {TargetRole.PRIMARY: "big", TargetRole.SHADOW: "small"}, "the app still gets the big model"
    again = _post(owner, _apply_url(tenant, rid), {"mode": "shadow", "min_samples": 10, "days": 1})
    assert again.status_code == 200 and again.json()["id"] == trial.pk, "applying twice names the same trial"

    _comparisons(trial, agree=9)  # too few
    refused = _post(owner, _apply_url(tenant, rid), {"mode": "enable"})
    assert refused.status_code == 400
    assert refused.json()["trial"]["measured"]["samples"] == 9 and refused.json()["trial"]["state"] == "shadow"
    _comparisons(trial, agree=0, disagree=1)  # 9 of 10 agree: 90% < 99%
    refused = _post(owner, _apply_url(tenant, rid), {"mode": "enable"}).json()
    assert refused["error"]["type"] == "trial_not_ready"
    assert refused["trial"]["measured"]["agreement"] == 0.9 and not refused["trial"]["measured"]["cleared"]
    rule.refresh_from_db()
    assert rule.shadow_percent == 100, "a refused enable changes nothing"

    ShadowComparison.objects.filter(rule=rule, normalized_match=False).delete()
    _comparisons(trial, agree=5)
    audits = AuditEvent.objects.count()
    enabled = _post(owner, _apply_url(tenant, rid), {"mode": "enable"})
    assert enabled.status_code == 200, enabled.content
    assert enabled.json()["state"] == "enabled" and enabled.json()["measured"]["agreement"] == 1.0
    rule.refresh_from_db()
    roles = {t.role: t.model for t in rule.targets.all()}
    assert roles == {TargetRole.PRIMARY: "small", TargetRole.FALLBACK: "big"} and rule.shadow_percent == 0
    assert AuditEvent.objects.count() > audits, "the routing change goes through the audited service"
    assert enabled.json()["measured"]["realised"]["requests"] == 0


def _semantic_trial(tenant: Tenant, **kwargs: Any) -> Trial:
    opportunity = Opportunity(id="semantic_cache-00000000000000aa", lever="semantic_cache", feature="",
                              predicted_savings_usd=Decimal("1.4"), share=0.2)  # fmt: skip
    values = {"quality_target": Decimal("0.99"), "daily_cap_usd": None, "min_samples": 5, "window_days": 7, **kwargs}
    return trial_start(project=tenant.project, opportunity=opportunity, **values)


def _samples(trial: Trial, similarity: float, *, agree: int, disagree: int = 0, guard: bool = True) -> None:
    start = TrialSample.objects.count()
    TrialSample.objects.bulk_create(
        TrialSample(
            trial=trial,
            request_id=f"s{start + i}",
            created_at=timezone.now(),
            prompt_similarity=similarity,
            guard_agrees=guard,
            normalized_match=i < agree,
        )  # fmt: skip
        for i in range(agree + disagree)
    )


def test_semantic_trial_curve_recommends_the_lowest_threshold_that_clears_the_target(people: People) -> None:
    trial = _semantic_trial(people.tenant)
    assert trial.lever == Lever.SEMANTIC_CACHE and trial.parameters == {"floor": "0.800", "window_cost_usd": "0"}
    _samples(trial, 0.97, agree=6)
    _samples(trial, 0.93, agree=3)
    _samples(trial, 0.88, agree=2, disagree=2)  # the monthly/yearly look-alikes
    _samples(trial, 0.85, agree=0, disagree=3, guard=False)  # the guard refuses these: never served
    measured = trial_measured(trial=trial)
    assert measured.cleared and measured.recommended_threshold == 0.93
    assert measured.samples == 9 and measured.agreement == 1.0
    by_threshold = {p["threshold"]: p for p in measured.curve}
    assert by_threshold[0.88] == {"threshold": 0.88, "hits": 13, "precision": round(11 / 13, 4)}
    assert 0.85 not in by_threshold and 0.89 not in by_threshold, "guard-refused or unseen: no point"

    response = _post(_api(people.owner), _apply_url(people.tenant, trial.recommendation_id), {"mode": "enable"})
    assert response.status_code == 200, response.content
    policy = CachePolicy.objects.get(project=people.tenant.project, feature="")
    assert policy.semantic_enabled and policy.similarity_threshold == Decimal("0.930")
    assert not policy.exact_enabled, "only the trialled lever is turned on"
    assert response.json()["parameters"]["threshold"] == "0.93"


def test_semantic_trial_without_enough_agreeing_hits_is_refused_with_its_numbers(people: People) -> None:
    trial = _semantic_trial(people.tenant, min_samples=5)
    _samples(trial, 0.9, agree=4, disagree=1)
    response = _post(_api(people.owner), _apply_url(people.tenant, trial.recommendation_id), {"mode": "enable"})
    assert response.status_code == 400
    measured = response.json()["trial"]["measured"]
    assert measured == {**measured, "samples": 5, "agreement": 0.8, "cleared": False, "recommended_threshold": None}
    assert not CachePolicy.objects.filter(project=people.tenant.project).exists()


def test_enable_without_a_shadow_trial_and_levers_without_trials_are_400(people: People) -> None:
    tenant = people.tenant
    rid = _route_recommendation(tenant)
    owner = _api(people.owner)
    response = _post(owner, _apply_url(tenant, rid), {"mode": "enable"})
    assert response.status_code == 400 and "shadow first" in str(response.json())
    body = owner.get(f"/api/projects/{tenant.project.slug}/opportunities/?days=1").json()
    [batch] = [o for o in body["opportunities"] if o["lever"] == "batch"]
    response = _post(owner, _apply_url(tenant, batch["id"]), {"mode": "shadow", "days": 1})
    assert response.status_code == 400 and "changes no answer" in str(response.json())
    assert _post(owner, _apply_url(tenant, "route-0000000000000000"), {"mode": "shadow"}).status_code == 404
    assert not Trial.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"mode": "on"},
        {"mode": ["shadow"]},
        {"mode": "shadow", "quality_target": "abc"},
        {"mode": "shadow", "quality_target": 2},
        {"mode": "shadow", "quality_target": "NaN"},
        {"mode": "shadow", "daily_cap_usd": -1},
        {"mode": "shadow", "daily_cap_usd": "1e30"},
        {"mode": "shadow", "min_samples": 0},
        {"mode": "shadow", "min_samples": "many"},
        {"mode": "shadow", "days": 10_000},
        [],
        "shadow",
        None,
    ],
)
def test_garbage_bodies_are_400_in_the_apis_shape(people: People, body: Any) -> None:
    rid = _route_recommendation(people.tenant)
    response = _post(_api(people.owner), _apply_url(people.tenant, rid), body)
    assert response.status_code == 400, response.content
    assert isinstance(response.json(), dict)
    assert not Trial.objects.exists()


def test_non_json_and_garbage_ids_are_clear_errors(people: People) -> None:
    rid = _route_recommendation(people.tenant)
    client = _api(people.owner)
    raw = client.post(_apply_url(people.tenant, rid), b"\xff\xfe{", content_type="application/json")
    assert raw.status_code == 400
    for bad in ("x" * 300, "route-%00", "..%2f..%2fetc"):
        assert _post(client, _apply_url(people.tenant, bad), {"mode": "shadow"}).status_code == 404
    assert _api(people.owner).post(f"/api/projects/{people.tenant.project.slug}/trials/999999/stop").status_code == 404


def test_who_may_apply_developer_and_finance_403_other_organisation_404(people: People) -> None:
    tenant = people.tenant
    rid = _route_recommendation(tenant)
    body = {"mode": "shadow", "days": 1}
    for user in (people.member, people.finance):
        assert _post(_api(user), _apply_url(tenant, rid), body).status_code == 403
        assert _api(user).get(f"/api/projects/{tenant.project.slug}/trials/").status_code == 200, "they may read"
    assert _post(_api(people.outsider), _apply_url(tenant, rid), body).status_code == 404
    assert not Trial.objects.exists()
    lead = member_make(tenant, Role.TEAM_LEAD, team=tenant.team)
    assert _post(_api(lead), _apply_url(tenant, rid), body).status_code == 201
    trial = Trial.objects.get()
    # Another organisation's owner can neither list nor stop it, nor reach it through their own project.
    outsider = _api(people.outsider)
    assert outsider.get(f"/api/projects/{tenant.project.slug}/trials/").status_code == 404
    assert outsider.post(f"/api/projects/{tenant.project.slug}/trials/{trial.pk}/stop").status_code == 404
    assert outsider.post(f"/api/projects/{people.other.project.slug}/trials/{trial.pk}/stop").status_code == 404
    assert _api(people.member).post(f"/api/projects/{tenant.project.slug}/trials/{trial.pk}/stop").status_code == 403
    assert Trial.objects.get().state == TrialState.SHADOW
    assert _post(_api(people.outsider), _apply_url(people.other, rid), body).status_code == 404


def test_the_page_starts_a_trial_with_its_button_and_shows_it(people: People) -> None:
    tenant = people.tenant
    rid = _route_recommendation(tenant)
    client = login(Client(), people.owner)
    page = client.get(f"/projects/{tenant.project.slug}/opportunities/?days=1").content.decode()
    assert f"/projects/{tenant.project.slug}/opportunities/{rid}/apply" in page and "Start shadow trial" in page
    response = client.post(f"/projects/{tenant.project.slug}/opportunities/{rid}/apply", {"mode": "shadow", "days": 1})
    assert response.status_code == 302
    trial = Trial.objects.get()
    page = client.get(f"/projects/{tenant.project.slug}/opportunities/?days=1").content.decode()
    assert "big → small" in page and "Enable" in page and "trial on" in page
    response = client.post(
        f"/projects/{tenant.project.slug}/opportunities/{rid}/apply", {"mode": "enable"}, follow=True
    )
    assert "Not enabled: 0 comparisons" in response.content.decode()
    response = client.post(f"/projects/{tenant.project.slug}/opportunities/{rid}/apply", {"mode": "bogus"}, follow=True)
    assert response.status_code == 200 and "mode:" in response.content.decode()
    assert client.post(f"/projects/{tenant.project.slug}/trials/{trial.pk}/stop").status_code == 302
    trial.refresh_from_db()
    assert trial.state == TrialState.STOPPED and trial.rule is not None
    trial.rule.refresh_from_db()
    assert trial.rule.shadow_percent == 0 and not trial.rule.is_active
    dev = login(Client(), people.member)
    assert dev.post(f"/projects/{tenant.project.slug}/opportunities/{rid}/apply", {"mode": "shadow"}).status_code == 403


def test_daily_cap_stops_a_trial_and_its_shadow_calls(people: People) -> None:
    rid = _route_recommendation(people.tenant)
    response = _post(_api(people.owner), _apply_url(people.tenant, rid), {"mode": "shadow", "days": 1,
                                                                          "daily_cap_usd": "0.01"})  # fmt: skip
    trial = Trial.objects.get(pk=response.json()["id"])
    _comparisons(trial, agree=5, cost="0.001")
    assert trials_hold_caps() == 0
    trial.refresh_from_db()
    assert trial.state == TrialState.SHADOW and trial.trial_spend_usd == Decimal("0.005")
    ShadowComparison.objects.filter(rule=trial.rule).update(shadow_cost=Decimal("0.002"))
    assert trials_hold_caps() == 1
    trial.refresh_from_db()
    assert trial.state == TrialState.STOPPED and "daily cap" in trial.stopped_reason
    assert trial.rule is not None and trial.rule.shadow_percent == 0


def _events(client: redis.Redis, *events: Any) -> None:
    for event in events:
        client.xadd(trial_stream(), {EVENT_FIELD: event if isinstance(event, bytes) else orjson.dumps(event)})


def test_the_trial_stream_stores_good_events_and_dead_letters_garbage(people: People) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(trial_stream(), names.dead_letters(trial_stream()))
    ours = _semantic_trial(people.tenant)
    other_opportunity = Opportunity(id="semantic_cache-00000000000000bb", lever="semantic_cache", feature="",
                                    predicted_savings_usd=Decimal(1), share=0.1)  # fmt: skip
    theirs = trial_start(project=people.other.project, opportunity=other_opportunity, quality_target=Decimal("0.99"),
                         daily_cap_usd=None, min_samples=5, window_days=7)  # fmt: skip
    now = timezone.now().timestamp()
    good = {"trial_id": ours.pk, "project_id": people.tenant.project.pk, "request_id": "req-1", "created_at": now,
            "prompt_similarity": 0.91, "guard_agrees": True, "normalized_match": False, "answer_similarity": 0.5,
            "prompt_text": "yearly\x00 price", "cached_prompt_text": "monthly price"}  # fmt: skip
    _events(
        client,
        good,
        {**good, "request_id": "req-1"},  # a re-send: stored once
        {**good, "request_id": "req-2", "trial_id": theirs.pk},  # names another project's trial: dropped
        {**good, "request_id": "req-3", "prompt_similarity": "high"},
        {**good, "request_id": "req-4", "trial_id": -3},
        {**good, "request_id": "req-5", "created_at": 1e300, "answer_similarity": float("inf")},
        b"not json",
        b"[1, 2]",
    )
    while trial_ingest_batch(client=client, consumer="tests"):
        pass
    stored = {s.request_id: s for s in TrialSample.objects.all()}
    assert set(stored) == {"req-1", "req-5"}
    assert stored["req-1"].prompt_text == "yearly price" and stored["req-1"].trial_id == ours.pk
    assert stored["req-5"].answer_similarity is None
    assert client.xlen(names.dead_letters(trial_stream())) == 4
    assert client.xpending(trial_stream(), GROUP)["pending"] == 0
    assert not dt.datetime.now(dt.UTC) < stored["req-5"].created_at


def test_disagreements_teach_the_projects_cache_policy_in_the_snapshot(people: People) -> None:
    from apps.policy.build import build_snapshot

    trial = _semantic_trial(people.tenant)
    CachePolicy.objects.create(project=people.other.project, semantic_enabled=True)
    for i in range(2):  # seen twice: learned
        TrialSample.objects.create(trial=trial, request_id=f"d{i}", created_at=timezone.now(), prompt_similarity=0.9,
                                   guard_agrees=True, normalized_match=False, prompt_text="Call the sales team",
                                   cached_prompt_text="Call the support team")  # fmt: skip
    snapshot = build_snapshot(1)
    view = snapshot.cache_policy(people.tenant.project.pk, "")
    assert view is not None and view.trial_id == trial.pk and not view.serves and view.indexes
    assert view.learned_opposites == frozenset({("sales", "support")})
    theirs = snapshot.cache_policy(people.other.project.pk, "")
    assert theirs is not None and theirs.learned_opposites == frozenset(), "never another project's"


def test_realised_savings_since_enablement_beside_the_prorated_prediction(people: People) -> None:
    trial = _semantic_trial(people.tenant)
    _samples(trial, 0.95, agree=5)
    response = _post(_api(people.owner), _apply_url(people.tenant, trial.recommendation_id), {"mode": "enable"})
    assert response.status_code == 200
    enabled_at = timezone.now() - dt.timedelta(days=1)
    Trial.objects.filter(pk=trial.pk).update(enabled_at=enabled_at)
    entry_make(people.tenant, cache_hit="semantic", cost=Decimal(0), counterfactual_cost=Decimal("0.15"))
    entry_make(people.tenant, cache_hit="semantic", cost=Decimal(0), counterfactual_cost=Decimal("0.05"))
    entry_make(people.tenant, cost=Decimal("0.2"), counterfactual_cost=Decimal("0.2"))  # went upstream: no saving
    entry_make(people.tenant, created_at=enabled_at - dt.timedelta(hours=1), cache_hit="semantic", cost=Decimal(0),
               counterfactual_cost=Decimal("9"))  # before enablement  # fmt: skip
    realised = _api(people.owner).get(f"/api/projects/{people.tenant.project.slug}/trials/").json()["trials"][0]
    numbers = realised["measured"]["realised"]
    assert numbers["requests"] == 2 and numbers["realised_savings_usd"] == "0.200000"
    # $1.40 predicted per 7 days: one day of it.
    assert Decimal(numbers["predicted_savings_usd"]) == pytest.approx(Decimal("0.2"), abs=Decimal("0.001"))
