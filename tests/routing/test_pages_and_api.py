"""Routing pages and API: what each role may do, form and field errors, per-rule figures from the ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.core.route import RULE, RouteDecision, Tried
from apps.routing.models import RoutingRule, ShadowComparison
from tests.factories import People, entry_make, login
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def _form(**overrides: str) -> dict[str, str]:
    data = {
        "name": "cheap first",
        "is_active": "on",
        "match_features": "support, billing",
        "match_tools": "any",
        "action": "cascade",
        "cascade_threshold": "0.8",
        "cascade_tokens": "3",
        "cascade_aggregate": "min",
        "shadow_percent": "0",
        "primaries": "gpt-4o-mini\ngpt-4o",
        "fallbacks": "gpt-4.1",
    }
    data.update(overrides)
    return data


def test_team_lead_adds_a_rule_through_the_form(people: People) -> None:
    project = people.tenant.project
    client = login(Client(), people.owner)
    response = client.post(f"/projects/{project.slug}/routing/", _form())
    assert response.status_code == 302
    rule = RoutingRule.objects.get(project=project)
    assert (rule.name, rule.action, rule.cascade_threshold, rule.match_features) == (
        "cheap first",
        "cascade",
        Decimal("0.800"),
        ["support", "billing"],
    )
    assert list(rule.targets.values_list("role", "model")) == [
        ("fallback", "gpt-4.1"),
        ("primary", "gpt-4o-mini"),
        ("primary", "gpt-4o"),
    ]
    page = client.get(f"/projects/{project.slug}/routing/")
    assert b"cheap first" in page.content and b"feature support" in page.content


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"primaries": "gpt-4o-mini"}, "A cascade needs exactly two models"),
        ({"fallbacks": "gpt-4o @ nowhere"}, "Line 1: no provider named"),
        ({"match_regex": "(oops"}, "Not a valid regular expression"),
        ({"cascade_threshold": "1.5"}, "less than or equal to 1"),
        ({"shadow_percent": "20"}, "Name the shadow model"),
    ],
)
def test_bad_rules_come_back_as_form_errors(people: People, overrides: dict[str, str], message: str) -> None:
    client = login(Client(), people.owner)
    response = client.post(f"/projects/{people.tenant.project.slug}/routing/", _form(**overrides))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not RoutingRule.objects.exists()


def test_developers_and_finance_read_but_cannot_change_rules(people: People) -> None:
    project = people.tenant.project
    rule = rule_make(people.tenant, name="mini for support", primaries="gpt-4o-mini")
    for user in (people.member, people.finance):
        client = login(Client(), user)
        page = client.get(f"/projects/{project.slug}/routing/")
        assert page.status_code == 200 and b"mini for support" in page.content and b"Add a rule" not in page.content
        assert client.post(f"/projects/{project.slug}/routing/", _form()).status_code == 403
        assert client.post(f"/projects/{project.slug}/routing/{rule.pk}/delete/").status_code == 403
        assert _api(user).delete(f"/api/routing-rules/{rule.pk}/").status_code == 403
    assert RoutingRule.objects.filter(pk=rule.pk).exists()


def test_outsiders_get_404_everywhere(people: People) -> None:
    project = people.tenant.project
    rule = rule_make(people.tenant, primaries="gpt-4o-mini")
    client = login(Client(), people.outsider)
    assert client.get(f"/projects/{project.slug}/routing/").status_code == 404
    assert client.get(f"/projects/{project.slug}/routing/{rule.pk}/").status_code == 404
    assert client.post(f"/projects/{project.slug}/routing/{rule.pk}/move/", {"direction": "up"}).status_code == 404
    api = _api(people.outsider)
    assert api.get(f"/api/routing-rules/{rule.pk}/").status_code == 404
    assert api.get(f"/api/routing-rules/{rule.pk}/stats/").status_code == 404
    assert api.get("/api/routing-rules/").json()["results"] == []
    created = api.post(
        "/api/routing-rules/", {"project": project.slug, "name": "x", "primaries": ["gpt-4o"]}, format="json"
    )
    assert created.status_code == 400 and "project" in created.json()["error"]["fields"]


def test_rules_page_queries_do_not_grow_with_rules(people: People) -> None:
    client = login(Client(), people.owner)
    url = f"/projects/{people.tenant.project.slug}/routing/"
    rule_make(people.tenant, primaries="gpt-4o-mini", fallbacks="gpt-4o")
    client.get(url)
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for n in range(5):
        rule_make(people.tenant, name=f"r{n}", action="split", primaries="gpt-4o 50\ngpt-4o-mini 50", shadow="gpt-4.1")
    with CaptureQueriesContext(connection) as many:
        client.get(url)
    assert len(many) == len(few) <= 14


def test_api_creates_updates_and_reports_a_rule(people: People) -> None:
    tenant = people.tenant
    api = _api(people.owner)
    created = api.post(
        "/api/routing-rules/",
        {"project": tenant.project.slug, "name": "canary", "action": "split",
         "primaries": ["gpt-4o @ sim 95", "gpt-4.1 @ sim 5"], "shadow": ["gpt-5-mini"], "shadow_percent": "10"},
        format="json",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["primaries"] == ["gpt-4o @ sim 95", "gpt-4.1 @ sim 5"] and body["shadow"] == ["gpt-5-mini @ sim"]
    rule = RoutingRule.objects.get(pk=body["id"])

    patched = api.patch(f"/api/routing-rules/{rule.pk}/", {"name": "canary 5%"}, format="json")
    assert patched.status_code == 200 and patched.json()["primaries"] == body["primaries"]
    bad = api.patch(f"/api/routing-rules/{rule.pk}/", {"primaries": ["gpt-4o"]}, format="json")
    assert bad.status_code == 400 and "primaries" in bad.json()["error"]["fields"]

    split = RouteDecision(kind=RULE, rule_id=rule.pk, action="split", model="gpt-4o")
    entry_make(tenant, route_rule=rule, route=f"route:{rule.pk}:split:gpt-4o", decision=split.as_json(),
               cost=Decimal("0.002"), counterfactual_cost=Decimal("0.002"))  # fmt: skip
    fell_back = split.variant(model="gpt-4.1", tried=(Tried("gpt-4.1", "sim", "500"),))
    entry_make(tenant, route_rule=rule, route=f"route:{rule.pk}:split:gpt-4.1;failed:gpt-4.1@sim(500)",
               decision=fell_back.as_json(), cost=Decimal("0.001"), counterfactual_cost=Decimal("0.003"))  # fmt: skip
    entry_make(tenant, route="direct", decision={"kind": "direct"})
    ShadowComparison.objects.create(
        request_id="req-s1", created_at=rule.created_at, rule=rule, project=tenant.project, primary_model="gpt-4o",
        shadow_model="gpt-5-mini", primary_latency_ms=100, shadow_latency_ms=300, primary_cost=Decimal("0.002"),
        shadow_cost=Decimal("0.0005"), shadow_status=200, exact_match=False, normalized_match=True, similarity=0.97,
    )  # fmt: skip
    stats = api.get(f"/api/routing-rules/{rule.pk}/stats/").json()
    assert (stats["requests"], Decimal(stats["cost_usd"]), Decimal(stats["saved_usd"]), stats["fallbacks"]) == (
        2,
        Decimal("0.003"),
        Decimal("0.002"),
        1,
    )
    assert stats["shadow_by_day"][0]["samples"] == 1 and stats["shadow_by_day"][0]["agreement_percent"] == 100.0

    page = login(Client(), people.owner).get(f"/projects/{tenant.project.slug}/routing/{rule.pk}/")
    assert b"Shadow comparison" in page.content and b"100.0%" in page.content
    assert api.delete(f"/api/routing-rules/{rule.pk}/").status_code == 204


def test_a_plain_target_among_several_providers_is_a_form_and_api_error(people: People) -> None:
    from apps.providers.services import provider_create
    from apps.tenancy.services import project_set_default_provider

    project = people.tenant.project
    provider_create(
        organization=people.tenant.org, name="backup sim", kind="simulated", base_url="http://127.0.0.1:9/v1"
    )
    project_set_default_provider(project=project, provider=None)
    client = login(Client(), people.owner)
    page = client.post(f"/projects/{project.slug}/routing/", _form(action="route", primaries="gpt-4o", fallbacks=""))
    assert page.status_code == 400 and "write which one, e.g. &#x27;gpt-4o @ backup sim&#x27;" in page.content.decode()
    api = _api(people.owner)
    refused = api.post("/api/routing-rules/", {"project": project.slug, "name": "x", "primaries": ["gpt-4o"]},
                       format="json")  # fmt: skip
    assert refused.status_code == 400 and "several providers price" in str(refused.json()["error"]["fields"])
    chosen = api.post("/api/routing-rules/", {"project": project.slug, "name": "x", "primaries": ["gpt-4o @ sim"]},
                      format="json")  # fmt: skip
    assert chosen.status_code == 201
    assert not RoutingRule.objects.filter(project=project).exclude(pk=chosen.json()["id"]).exists()
