"""Turning pruning on and off per feature, by page and API: who may, what garbage gets, what is suggested."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from apps.routing.models import PrunePolicy
from apps.tenancy.models import Role
from tests.factories import People, entry_make, login, member_make

pytestmark = pytest.mark.django_db


def _post(client: Client, slug: str, body: Any) -> Any:
    return client.post(f"/api/projects/{slug}/pruning/", json.dumps(body), content_type="application/json")


def test_a_lead_turns_a_cap_on_by_api_beside_the_suggestion_and_it_is_audited(people: People) -> None:
    tenant = people.tenant
    for completion in (40, 60, 80):
        entry_make(tenant, feature="summaries", completion_tokens=completion, max_tokens=4000, turns=2,
                   cache_key="k" * 64)  # fmt: skip
    lead = login(Client(), member_make(tenant, Role.TEAM_LEAD, team=tenant.team))
    slug = tenant.project.slug

    [suggested] = lead.get(f"/api/projects/{slug}/pruning/").json()["suggestions"]
    assert suggested["feature"] == "summaries" and suggested["max_tokens_p50"] == 4000
    assert suggested["suggested_max_tokens"] == int(suggested["completion_tokens_p99"] * 1.25) + 1

    response = _post(lead, slug, {"feature": "summaries", "cap_enabled": True,
                                  "max_tokens_cap": suggested["suggested_max_tokens"]})  # fmt: skip
    assert response.status_code == 200, response.content
    policy = PrunePolicy.objects.get(project=tenant.project, feature="summaries")
    assert policy.cap_enabled and policy.max_tokens_cap == suggested["suggested_max_tokens"]
    assert not policy.history_enabled
    # Fields left out keep their value; the history window is turned on beside the cap.
    assert _post(lead, slug, {"feature": "summaries", "history_enabled": True, "history_turns": 6}).status_code == 200
    policy.refresh_from_db()
    assert (policy.cap_enabled, policy.history_enabled, policy.history_turns) == (True, True, 6)
    listed = lead.get(f"/api/projects/{slug}/pruning/").json()["policies"]
    assert listed == [{"feature": "summaries", "cap_enabled": True, "max_tokens_cap": policy.max_tokens_cap,
                       "history_enabled": True, "history_turns": 6}]  # fmt: skip
    assert AuditEvent.objects.filter(object_type="prune_policy", object_id=str(policy.pk)).count() == 2


@pytest.mark.parametrize(
    "body",
    [
        {"feature": "f", "max_tokens_cap": 0},
        {"feature": "f", "max_tokens_cap": -1},
        {"feature": "f", "max_tokens_cap": 10**18},
        {"feature": "f", "max_tokens_cap": "many"},
        {"feature": "f", "history_turns": 0},
        {"feature": "f", "history_turns": 100_000},
        {"feature": "f", "cap_enabled": "perhaps"},
        {"feature": "x" * 101},
        {"feature": ["a"]},
        {"cap_enabled": True},
        [1, 2],
        "garbage",
    ],
)
def test_garbage_policy_input_is_a_400_in_the_apis_shape_and_changes_nothing(people: People, body: Any) -> None:
    client = login(Client(), people.owner)
    response = _post(client, people.tenant.project.slug, body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["type"] == "validation_error"
    assert not PrunePolicy.objects.exists()


def test_a_nul_or_a_body_that_is_not_json_is_a_400(people: People) -> None:
    client = login(Client(), people.owner)
    url = f"/api/projects/{people.tenant.project.slug}/pruning/"
    assert client.post(url, '{"feature": "a\\u0000b"}', content_type="application/json").status_code == 400
    assert client.post(url, b"\xff\xfe{", content_type="application/json").status_code == 400
    assert not PrunePolicy.objects.exists()


def test_developers_and_finance_cannot_change_pruning_and_outsiders_do_not_see_it(people: People) -> None:
    slug = people.tenant.project.slug
    body = {"feature": "f", "cap_enabled": True, "max_tokens_cap": 10}
    for user in (people.member, people.finance):
        client = login(Client(), user)
        assert client.get(f"/api/projects/{slug}/pruning/").status_code == 200
        assert client.get(f"/projects/{slug}/pruning/").status_code == 200
        assert _post(client, slug, body).status_code == 403
        assert client.post(f"/projects/{slug}/pruning/", {**body, "history_turns": 5}).status_code == 403
    outsider = login(Client(), people.outsider)
    assert outsider.get(f"/api/projects/{slug}/pruning/").status_code == 404
    assert outsider.get(f"/projects/{slug}/pruning/").status_code == 404
    assert _post(outsider, slug, body).status_code == 404
    assert outsider.post(f"/projects/{slug}/pruning/", {**body, "history_turns": 5}).status_code == 404
    assert not PrunePolicy.objects.exists()


def test_one_tenants_lead_cannot_touch_another_projects_pruning(people: People) -> None:
    # The owner of the other organisation names our project's slug: it is not theirs to see.
    other_owner = login(Client(), people.other.owner)
    assert _post(other_owner, people.tenant.project.slug, {"feature": ""}).status_code == 404
    # Their own project's policy is theirs alone.
    assert _post(other_owner, people.other.project.slug, {"feature": "", "cap_enabled": True}).status_code == 200
    assert list(PrunePolicy.objects.values_list("project_id", flat=True)) == [people.other.project.pk]
    mine = login(Client(), people.owner).get(f"/api/projects/{people.tenant.project.slug}/pruning/").json()
    assert mine["policies"] == []


def test_the_page_saves_a_feature_and_shows_form_errors(people: People) -> None:
    client = login(Client(), people.owner)
    url = f"/projects/{people.tenant.project.slug}/pruning/"
    fields = {"feature": "support", "history_enabled": "on", "history_turns": "4", "max_tokens_cap": "256"}
    response = client.post(url, fields)
    assert response.status_code == 302
    policy = PrunePolicy.objects.get(feature="support")
    assert (policy.history_enabled, policy.history_turns, policy.cap_enabled) == (True, 4, False)
    page = client.get(url)
    assert page.status_code == 200 and b"system + last 4" in page.content

    for garbage in ({**fields, "history_turns": "0"}, {**fields, "max_tokens_cap": "1e18"},
                    {**fields, "history_turns": "many"}, {**fields, "feature": "x" * 101}):  # fmt: skip
        response = client.post(url, garbage)
        assert response.status_code == 400 and b"has-error" in response.content
    policy.refresh_from_db()
    assert policy.history_turns == 4
