"""What each role sees: masked secrets, their team's budgets and alerts, cached prompts; leads without a team."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from apps.budgets.models import Alert, AlertKind, BudgetScope, ChannelKind, NotificationChannel
from apps.budgets.services import budget_create
from apps.cache.models import CacheEntry
from apps.dashboard.services import api_token_rotate
from apps.providers.models import Provider
from apps.tenancy.models import Role
from apps.tenancy.permissions import mask
from apps.tenancy.services import project_create, team_create
from tests.factories import People, login, member_make

pytestmark = pytest.mark.django_db

SLACK = "https://hooks.slack.com/services/T0001/B0001/abcdefSECRETtoken"
MASKED_SLACK = "https://hooks.slack.com/…****"


def _api(user) -> Client:  # type: ignore[no-untyped-def]
    return Client(headers={"Authorization": f"Token {api_token_rotate(user=user).key}"})


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (SLACK, MASKED_SLACK),
        ("https://user:pass@hooks.example.com:8443/x?token=1", "https://hooks.example.com:8443/…****"),
        ("ops@example.com, cfo@corp.example", "…@example.com, …@corp.example"),
        ("http://10.0.0.5", "http://10.0.0.5/…****"),
        ("just-a-token", "****"),
        ("", ""),
        ("   ", ""),
        ("=HYPERLINK(1)", "****"),
    ],
)
def test_mask_keeps_only_what_says_which_service(value: str, shown: str) -> None:
    assert mask(value) == shown


def test_channel_targets_and_provider_urls_are_masked_for_all_but_owners(people: People) -> None:
    tenant = people.tenant
    # Stored as it is (rows made directly: this test is about showing, not about saving).
    NotificationChannel.objects.create(organization=tenant.org, name="slack", kind=ChannelKind.SLACK, target=SLACK)
    Provider.objects.filter(pk=tenant.provider.pk).update(base_url="https://llm.internal.example/v1?api-key=s3cret")
    lead = member_make(tenant, Role.TEAM_LEAD, team=tenant.team)
    for user, full in ((people.owner, True), (lead, False), (people.member, False), (people.finance, False)):
        page = login(Client(), user).get("/budgets/").content.decode()
        channels = _api(user).get("/api/channels/").json()["results"]
        providers_page = login(Client(), user).get(f"/orgs/{tenant.org.slug}/providers/").content.decode()
        providers = _api(user).get("/api/providers/").json()["results"]
        if full:
            assert SLACK in page and channels[0]["target"] == SLACK
            assert "s3cret" in providers_page and "s3cret" in providers[0]["base_url"]
        else:
            assert SLACK not in page and MASKED_SLACK in page, user
            assert channels[0]["target"] == MASKED_SLACK
            assert "s3cret" not in providers_page and "https://llm.internal.example/…****" in providers_page
            assert providers[0]["base_url"] == "https://llm.internal.example/…****"


def test_developers_see_their_teams_budgets_and_alerts_only(people: People) -> None:
    tenant = people.tenant
    other_team = team_create(organization=tenant.org, name="other team")
    other_project = project_create(organization=tenant.org, name="other project", team=other_team)
    mine = budget_create(organization=tenant.org, name="mine", scope=BudgetScope.PROJECT, project=tenant.project,
                         amount_usd=Decimal(5))  # fmt: skip
    team = budget_create(organization=tenant.org, name="my team", scope=BudgetScope.TEAM, team=tenant.team,
                         amount_usd=Decimal(50))  # fmt: skip
    theirs = budget_create(organization=tenant.org, name="theirs", scope=BudgetScope.PROJECT, project=other_project,
                           amount_usd=Decimal(7))  # fmt: skip
    org_wide = budget_create(organization=tenant.org, name="whole org", scope=BudgetScope.ORGANIZATION,
                             amount_usd=Decimal(900))  # fmt: skip
    for n, (project, budget) in enumerate([(tenant.project, mine), (other_project, theirs), (None, org_wide)]):
        Alert.objects.create(organization=tenant.org, project=project, budget=budget, kind=AlertKind.BUDGET_THRESHOLD,
                             dedup_key=f"k{n}", title=f"alert about {budget.name}", message="80%")  # fmt: skip

    member = login(Client(), people.member)
    api = _api(people.member)
    assert {b["name"] for b in api.get("/api/budgets/").json()["results"]} == {"mine", "my team"}
    assert {a["title"] for a in api.get("/api/alerts/").json()["results"]} == {"alert about mine"}
    page = member.get("/budgets/").content.decode()
    assert "mine" in page and "my team" in page and "theirs" not in page and "whole org" not in page
    alerts = member.get("/alerts/").content.decode()
    assert "alert about mine" in alerts and "alert about theirs" not in alerts and "whole org" not in alerts
    assert member.get(f"/budgets/{theirs.pk}/").status_code == 404
    assert api.get(f"/api/budgets/{org_wide.pk}/status/").status_code == 404
    overview = member.get(f"/overview/?scope=project:{tenant.project.slug}").content.decode()
    assert "whole org" not in overview and "mine" in overview
    # Finance reads the whole organisation's.
    names = {b["name"] for b in _api(people.finance).get("/api/budgets/").json()["results"]}
    assert names == {"mine", "my team", "theirs", "whole org"} and team.pk


def test_cached_prompts_are_for_who_manages_the_project(people: People) -> None:
    tenant = people.tenant
    entry = CacheEntry.objects.create(
        project=tenant.project, exact_key="k", fingerprint="f", model="gpt-4o-mini", prompt_text="my IBAN is DE89…",
        response={"choices": [{"message": {"content": "noted"}}]}, expires_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    url = f"/projects/{tenant.project.slug}/cache/"
    lead = member_make(tenant, Role.TEAM_LEAD, team=tenant.team)
    for user in (people.owner, lead):
        client = login(Client(), user)
        assert "my IBAN" in client.get(url).content.decode()
        assert client.get(f"{url}entries/{entry.pk}/").status_code == 200
    for user in (people.member, people.finance):
        client = login(Client(), user)
        page = client.get(url)
        assert page.status_code == 200 and "my IBAN" not in page.content.decode()
        assert "shown to owners and the project's team lead only" in page.content.decode()
        assert client.get(f"{url}entries/{entry.pk}/").status_code == 403
        assert "my IBAN" not in client.get(f"{url}?q=IBAN").content.decode()


def test_a_lead_without_a_team_manages_every_project_but_no_organisation_object(people: People) -> None:
    tenant = people.tenant
    lead = member_make(tenant, Role.TEAM_LEAD)  # no team
    other_team = team_create(organization=tenant.org, name="elsewhere")
    other_project = project_create(organization=tenant.org, name="elsewhere", team=other_team)
    client = login(Client(), lead)
    # Any team's project: its settings, keys and budgets.
    alias = {"alias": "x", "provider": tenant.provider.pk, "model": "gpt-4o"}
    assert client.post(f"/projects/{other_project.slug}/aliases/", alias).status_code == 302
    budget = {
        "organization": tenant.org.pk, "name": "b", "scope": "project", "project": other_project.pk,
        "amount_usd": "3", "period": "monthly", "timezone": "UTC", "mode": "hard", "alert_thresholds": "",
    }  # fmt: skip
    assert client.post("/budgets/new/", budget).status_code == 302
    # A project in any team, but not one outside every team (that is organisation-wide).
    assert (
        client.post(f"/orgs/{tenant.org.slug}/projects/new/", {"name": "p1", "team": other_team.pk}).status_code == 302
    )
    assert client.post(f"/orgs/{tenant.org.slug}/projects/new/", {"name": "p2", "team": ""}).status_code == 403
    # Organisation-wide objects stay the owner's.
    org_budget = {**budget, "scope": "organization", "project": ""}
    assert client.post("/budgets/new/", org_budget).status_code == 403
    team_budget = {**budget, "scope": "team", "team": other_team.pk, "project": ""}
    assert client.post("/budgets/new/", team_budget).status_code == 403
    provider = {"name": "n", "kind": "simulated", "base_url": tenant.provider.base_url}
    assert client.post(f"/orgs/{tenant.org.slug}/providers/", provider).status_code == 403


def test_a_team_lead_cannot_pause_change_or_delete_the_organisations_or_another_teams_budget(
    people: People,
) -> None:
    tenant = people.tenant
    lead = member_make(tenant, Role.TEAM_LEAD, team=tenant.team)
    other_team = team_create(organization=tenant.org, name="team b")
    money = {"organization": tenant.org, "amount_usd": Decimal(100), "mode": "hard"}
    org_budget = budget_create(name="whole org", scope=BudgetScope.ORGANIZATION, **money)  # type: ignore[arg-type]
    team_b_budget = budget_create(name="team b", scope=BudgetScope.TEAM, team=other_team, **money)  # type: ignore[arg-type]
    own = budget_create(name="own", scope=BudgetScope.PROJECT, project=tenant.project, **money)  # type: ignore[arg-type]
    page, api = login(Client(), lead), _api(lead)
    for budget in (org_budget, team_b_budget):
        assert page.post(f"/budgets/{budget.pk}/toggle/").status_code in (403, 404)
        assert api.patch(
            f"/api/budgets/{budget.pk}/", {"is_active": False}, content_type="application/json"
        ).status_code in (403, 404)
        assert api.patch(
            f"/api/budgets/{budget.pk}/", {"amount_usd": "1"}, content_type="application/json"
        ).status_code in (403, 404)
        assert api.delete(f"/api/budgets/{budget.pk}/").status_code in (403, 404)
        budget.refresh_from_db()
        assert budget.is_active and budget.amount_usd == Decimal(100)
    # The lead's own team's project budget is theirs to pause (the control: the URLs above are right).
    assert page.post(f"/budgets/{own.pk}/toggle/").status_code == 302
    own.refresh_from_db()
    assert not own.is_active


def test_garbage_in_the_matrix_inputs_is_a_client_error(people: People) -> None:
    """Ids that are not ids, other tenants' objects and nonsense methods: 4xx, never a 500."""
    owner = login(Client(), people.owner)
    other = people.other
    assert (
        owner.post("/budgets/new/", {"organization": "x'; drop", "scope": "\x00", "amount_usd": "NaN"}).status_code
        == 400
    )
    assert (
        owner.post(f"/orgs/{people.tenant.org.slug}/projects/new/", {"name": "p", "team": "99999999999"}).status_code
        == 400
    )
    api = _api(people.owner)
    bad = api.post("/api/budgets/", {"organization": other.org.slug, "project": other.project.slug}, "application/json")
    assert bad.status_code == 400
    assert api.patch("/api/budgets/abc/", {}, "application/json").status_code == 404
    assert api.post("/api/keys/%00/revoke/").status_code == 404
