"""What each lever would have saved, read from the ledger; the page and API, their garbage and outsiders."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.opportunities.selectors import PROMPT_CACHE_MIN_TOKENS, project_opportunities
from apps.providers.models import Price
from apps.providers.services import price_set
from apps.tenancy.models import Role
from tests.factories import People, Tenant, entry_make, login, member_make, tenant_make

pytestmark = pytest.mark.django_db

KEY_A, KEY_B = "a" * 64, "b" * 64


def _prices(tenant: Tenant) -> None:
    """Two models of our own instead of the public catalogue the simulated provider starts with."""
    Price.objects.filter(provider=tenant.provider).delete()
    day = timezone.now().date() - dt.timedelta(days=30)
    price_set(provider=tenant.provider, model="big", input_per_mtok=Decimal("10"), output_per_mtok=Decimal("30"),
              cached_input_per_mtok=Decimal("1"), batch_input_per_mtok=Decimal("5"),
              batch_output_per_mtok=Decimal("15"), effective_from=day)  # fmt: skip
    price_set(provider=tenant.provider, model="small", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("3"),
              effective_from=day)  # fmt: skip


def _row(tenant: Tenant, *, minutes_ago: float, **fields: object) -> None:
    values: dict[str, object] = {
        "created_at": timezone.now() - dt.timedelta(minutes=minutes_ago),
        "feature": "faq",
        "served_model": "big",
        "requested_model": "big",
        "cache_key": KEY_A,
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cost": Decimal("0.013"),  # 1000 * $10/M + 100 * $30/M
        **fields,
    }
    entry_make(tenant, **values)


def _by_lever(report: object) -> dict[str, list]:  # type: ignore[type-arg]
    found: dict[str, list] = {}  # type: ignore[type-arg]
    for item in report.opportunities:  # type: ignore[attr-defined]
        found.setdefault(item.lever, []).append(item)
    return found


def test_exact_repeats_within_the_ttl_are_what_an_exact_cache_saves() -> None:
    tenant = tenant_make()
    _prices(tenant)
    # One key asked at 0, 10 and 50 minutes; with a 30-minute TTL the 10-minute ask hits, the 50-minute
    # one finds the entry expired and stores again. Another end user's ask is never a hit (scope).
    for minutes in (60, 50, 10):
        _row(tenant, minutes_ago=minutes)
    _row(tenant, minutes_ago=55, end_user="bob")
    _row(tenant, minutes_ago=40, cache_key=KEY_B)
    _row(tenant, minutes_ago=5, cache_hit="exact", cost=Decimal(0))  # already served by the cache: not counted
    _row(tenant, minutes_ago=4, status_code=500)  # failed: not counted
    _row(tenant, minutes_ago=3, decision={"kind": "rule", "part": "cheap"})  # a cascade's side row

    report = project_opportunities(project=tenant.project, days=1, ttl_seconds=30 * 60)
    [exact] = _by_lever(report)["exact_cache"]
    assert exact.feature == "faq"
    assert exact.predicted_savings_usd == Decimal("0.013")
    assert exact.evidence["repeats_within_ttl"] == 1 and exact.evidence["requests"] == 5
    assert exact.share == pytest.approx(0.013 / (0.013 * 5))
    [listed] = [o for o in report.as_json()["opportunities"] if o["id"] == exact.id]
    assert listed["predicted_savings_usd"] == "0.013000" and listed["lever"] == "exact_cache"

    longer = _by_lever(project_opportunities(project=tenant.project, days=1, ttl_seconds=3 * 3600))["exact_cache"]
    assert longer[0].evidence["repeats_within_ttl"] == 2, "with a 3-hour TTL the 50-minute repeat hits as well"


def test_cheaper_route_batch_and_prompt_cache_are_priced_from_the_organisations_prices() -> None:
    tenant = tenant_make()
    _prices(tenant)
    prefix = PROMPT_CACHE_MIN_TOKENS + 976  # 2,000 tokens of static system prompt
    for i in range(4):
        _row(tenant, minutes_ago=i + 1, cache_key=f"{i:064d}", feature="triage", prefix_key=KEY_B,
             prefix_tokens=prefix, prompt_tokens=2100, cost=Decimal("0.024"))  # fmt: skip
    report = project_opportunities(project=tenant.project, days=1)
    levers = _by_lever(report)

    [route] = levers["route"]
    assert (route.evidence["from_model"], route.evidence["to_model"]) == ("big", "small")
    # 8,400 prompt and 400 completion tokens: $0.0096 on the small model, against $0.096 spent.
    assert route.predicted_savings_usd == Decimal("0.096") - Decimal("0.0096")
    assert route.evidence["quality"].startswith("unmeasured")

    [batch] = levers["batch"]
    assert batch.predicted_savings_usd == Decimal("0.096") - Decimal("0.048")

    [cached] = levers["prompt_cache"]
    # Three sends after the first could have had their 2,000-token prefix at $1/M instead of $10/M.
    assert cached.evidence["cacheable_tokens"] == 3 * prefix
    assert cached.predicted_savings_usd == Decimal(3 * prefix * 9) / Decimal(1_000_000)

    [profile] = report.features
    assert profile["static_prefix_share"] == round(prefix / 2100, 4)
    assert [o.predicted_savings_usd for o in report.opportunities] == sorted(
        (o.predicted_savings_usd for o in report.opportunities), reverse=True
    )


def test_discounts_already_received_and_streamed_features_are_not_offered_again() -> None:
    tenant = tenant_make()
    _prices(tenant)
    for i in range(3):
        _row(tenant, minutes_ago=i + 1, cache_key=f"{i:064d}", prefix_key=KEY_B, prefix_tokens=1500,
             cached_tokens=1500 if i else 0, streamed=True)  # fmt: skip
    levers = _by_lever(project_opportunities(project=tenant.project, days=1))
    assert "prompt_cache" not in levers, "the provider already cached the prefix after the first send"
    assert "batch" not in levers, "a feature that streams is not latency-tolerant"


def test_max_tokens_against_use_and_history_growth_are_profiled() -> None:
    tenant = tenant_make()
    for i in range(20):
        _row(tenant, minutes_ago=i + 1, cache_key=f"{i:064d}", max_tokens=4000, completion_tokens=100 + i,
             turns=1 + i)  # fmt: skip
    [profile] = project_opportunities(project=tenant.project, days=1).features
    assert profile["max_tokens_p50"] == 4000
    assert 118 < profile["completion_tokens_p99"] <= 119
    assert profile["suggested_max_tokens"] == int(profile["completion_tokens_p99"] * 1.25) + 1
    assert (profile["turns_avg"], profile["turns_max"]) == (10.5, 20)


def test_one_tenants_traffic_never_shows_in_anothers_opportunities(people: People) -> None:
    _prices(people.other)
    for minutes in (3, 2, 1):
        _row(people.other, minutes_ago=minutes, feature="secret-feature")
    assert project_opportunities(project=people.tenant.project, days=1).opportunities == []

    api = Client()
    api.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=people.owner).key}"
    mine = api.get(f"/api/projects/{people.tenant.project.slug}/opportunities/")
    assert mine.status_code == 200 and mine.json()["opportunities"] == [] and mine.json()["features"] == []
    # The other organisation's project is not there at all, by API or page.
    assert api.get(f"/api/projects/{people.other.project.slug}/opportunities/").status_code == 404
    page = login(Client(), people.owner).get(f"/projects/{people.other.project.slug}/opportunities/")
    assert page.status_code == 404


def test_every_role_that_sees_the_project_reads_them_and_the_page_shows_them(people: People) -> None:
    _prices(people.tenant)
    for minutes in (3, 2, 1):
        _row(people.tenant, minutes_ago=minutes)
    slug = people.tenant.project.slug
    lead = member_make(people.tenant, Role.TEAM_LEAD, team=people.tenant.team)
    for user in (people.owner, lead, people.member, people.finance):
        response = login(Client(), user).get(f"/projects/{slug}/opportunities/")
        assert response.status_code == 200
        assert b"exact_cache" in response.content and b"faq" in response.content
    body = login(Client(), people.owner).get(f"/api/projects/{slug}/opportunities/?days=1&ttl=600").json()
    assert body["ttl_seconds"] == 600
    assert {o["lever"] for o in body["opportunities"]} >= {"exact_cache", "route"}
    first = body["opportunities"][0]
    assert set(first) == {"id", "lever", "feature", "predicted_savings_usd", "share", "evidence"}
    assert Decimal(first["predicted_savings_usd"]) > 0


@pytest.mark.parametrize(
    "query",
    ["days=0", "days=-1", "days=91", "days=abc", "days=1e9", "ttl=0", "ttl=99999999999", "ttl=%00", "days=7.5"],
)
def test_garbage_in_the_window_is_a_400_in_the_apis_shape(people: People, query: str) -> None:
    client = login(Client(), people.owner)
    response = client.get(f"/api/projects/{people.tenant.project.slug}/opportunities/?{query}")
    assert response.status_code == 400
    field = query.split("=")[0]
    error = response.json()["error"]
    # A NUL is refused for every /api/ query string before the view runs; the rest name their field.
    assert error["type"] == "validation_error"
    assert field in error["fields"] if "%00" not in query else "NUL" in error["message"]
    # The page falls back to its default window rather than failing.
    page = client.get(f"/projects/{people.tenant.project.slug}/opportunities/?{query}")
    assert page.status_code == 200


def test_the_page_makes_as_many_queries_for_many_features_as_for_one(people: People) -> None:
    _prices(people.tenant)
    client = login(Client(), people.owner)
    url = f"/projects/{people.tenant.project.slug}/opportunities/"
    _row(people.tenant, minutes_ago=2)
    _row(people.tenant, minutes_ago=1)
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for i in range(12):
        _row(people.tenant, minutes_ago=i + 3, feature=f"f{i % 6}", cache_key=f"{i % 3:064d}", prefix_key=KEY_B,
             prefix_tokens=1500, end_user=f"u{i % 2}")  # fmt: skip
    with CaptureQueriesContext(connection) as many:
        client.get(url)
    assert len(many) == len(few)
