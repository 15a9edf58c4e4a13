"""Edit and delete pages for budgets, rate limits and channels, and acknowledging alerts: garbage, roles,
outsiders, and the audit log seeing every change."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent, ObjectType
from apps.budgets.models import Alert, AlertKind, Budget, BudgetScope, NotificationChannel, RateLimit
from apps.budgets.services import alert_raise, budget_create, channel_create, rate_limit_set
from apps.tenancy.models import Role
from tests.factories import People, login, member_make


def _budget(people: People) -> Budget:
    return budget_create(organization=people.tenant.org, name="cap", scope=BudgetScope.PROJECT,
                         project=people.tenant.project, amount_usd=Decimal(10))  # fmt: skip


def _edit_post(budget: Budget, **changes: str) -> dict[str, str]:
    data = {"name": budget.name, "scope": budget.scope, "project": str(budget.project_id), "amount_usd": "10",
            "period": budget.period, "timezone": "UTC", "mode": budget.mode, "alert_thresholds": "50, 80"}  # fmt: skip
    data.update(changes)
    return data


def test_budget_edit_refuses_garbage_and_keeps_the_budget(client: Client, people: People) -> None:
    budget = _budget(people)
    login(client, people.owner)
    page = client.get(f"/budgets/{budget.pk}/edit/")
    assert page.status_code == 200 and 'value="cap"' in page.content.decode()
    for garbage in ({"amount_usd": "-5"}, {"amount_usd": "1e999"}, {"alert_thresholds": "fifty"},
                    {"timezone": "Mars/Olympus"}, {"scope": "project", "project": ""}, {"name": "x" * 500},
                    {"project": "999999"}):  # fmt: skip
        response = client.post(f"/budgets/{budget.pk}/edit/", _edit_post(budget, **garbage))
        assert response.status_code == 400, garbage
        assert response.context["form"].errors, garbage
    budget.refresh_from_db()
    assert (budget.name, budget.amount_usd) == ("cap", Decimal(10))
    assert client.post(f"/budgets/{budget.pk}/edit/", _edit_post(budget, amount_usd="12")).status_code == 302
    budget.refresh_from_db()
    assert budget.amount_usd == Decimal(12) and budget.alert_thresholds == [50, 80]
    assert AuditEvent.objects.filter(object_type=ObjectType.BUDGET, action="update").count() == 1


def test_budget_edit_and_delete_roles_and_outsiders(client: Client, people: People) -> None:
    budget = _budget(people)
    other = budget_create(organization=people.other.org, name="theirs", scope=BudgetScope.ORGANIZATION,
                          amount_usd=Decimal(5))  # fmt: skip
    for user, status in ((people.finance, 403), (people.member, 403), (people.outsider, 404)):
        login(client, user)
        assert client.get(f"/budgets/{budget.pk}/edit/").status_code == status
        assert client.post(f"/budgets/{budget.pk}/edit/", _edit_post(budget, amount_usd="1")).status_code == status
        assert client.post(f"/budgets/{budget.pk}/delete/").status_code == status
    login(client, people.owner)
    # Another organisation's budget is not there at all; this one's project cannot be swapped for theirs.
    assert client.post(f"/budgets/{other.pk}/delete/").status_code == 404
    swapped = client.post(f"/budgets/{budget.pk}/edit/", _edit_post(budget, project=str(people.other.project.pk)))
    assert swapped.status_code == 400
    assert Budget.objects.filter(pk__in=[budget.pk, other.pk]).count() == 2
    assert client.post(f"/budgets/{budget.pk}/delete/").status_code == 302
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert AuditEvent.objects.filter(object_type=ObjectType.BUDGET, action="delete").count() == 1


def test_reloading_a_form_url_goes_back_to_its_page(client: Client, people: People) -> None:
    login(client, people.owner)
    for path in ("/budgets/new/", "/budgets/limits/new/", "/budgets/channels/new/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"] == "/budgets/", path


def test_rate_limit_edit_and_delete(client: Client, people: People) -> None:
    limit = rate_limit_set(project=people.tenant.project, requests_per_minute=60)
    theirs = rate_limit_set(project=people.other.project, requests_per_minute=5)
    login(client, people.owner)
    assert f"/budgets/limits/{limit.pk}/edit/" in client.get("/budgets/").content.decode()
    for garbage in ({}, {"requests_per_minute": "-1"}, {"tokens_per_minute": "many"}, {"max_concurrent": "1e30"}):
        assert client.post(f"/budgets/limits/{limit.pk}/edit/", garbage).status_code == 400, garbage
    assert client.post(f"/budgets/limits/{limit.pk}/edit/", {"tokens_per_minute": "1000"}).status_code == 302
    limit.refresh_from_db()
    assert (limit.requests_per_minute, limit.tokens_per_minute) == (None, 1000)
    assert client.post(f"/budgets/limits/{theirs.pk}/edit/", {"requests_per_minute": "1"}).status_code == 404
    assert client.post(f"/budgets/limits/{theirs.pk}/delete/").status_code == 404
    for user, status in ((people.finance, 403), (people.member, 403), (people.outsider, 404)):
        login(client, user)
        assert client.post(f"/budgets/limits/{limit.pk}/delete/").status_code == status
    login(client, people.owner)
    assert client.post(f"/budgets/limits/{limit.pk}/delete/").status_code == 302
    assert list(RateLimit.objects.values_list("pk", flat=True)) == [theirs.pk]
    assert AuditEvent.objects.filter(object_type=ObjectType.RATE_LIMIT, action="delete").count() == 1


def test_a_second_rate_limit_for_the_same_scope_is_a_form_error(client: Client, people: People) -> None:
    project = people.tenant.project
    limit = rate_limit_set(project=project, requests_per_minute=60)
    key_limit = rate_limit_set(project=project, api_key=people.tenant.key.api_key, requests_per_minute=10)
    login(client, people.owner)
    for scope, existing in (("", "the whole project"), (str(people.tenant.key.api_key.pk), "the key")):
        response = client.post(
            "/budgets/limits/new/", {"project": project.pk, "api_key": scope, "requests_per_minute": "5"}
        )
        assert response.status_code == 400
        html = response.content.decode()
        assert '<small class="error">' + project.name + " already has a rate limit for " + existing in html
        assert '<details class="form-panel" open' in html.replace("'", '"')  # the form opens on its error
    assert RateLimit.objects.get(pk=limit.pk).requests_per_minute == 60
    assert RateLimit.objects.get(pk=key_limit.pk).requests_per_minute == 10
    # Another organisation's project has no limit yet, but is not this owner's to choose.
    other = client.post("/budgets/limits/new/", {"project": people.other.project.pk, "requests_per_minute": "5"})
    assert other.status_code == 400 and not RateLimit.objects.filter(project=people.other.project).exists()


def test_channel_edit_and_delete(client: Client, people: People) -> None:
    channel = channel_create(organization=people.tenant.org, name="ops", kind="email", target="ops@example.com")
    theirs = channel_create(organization=people.other.org, name="x", kind="email", target="x@example.com")
    lead = member_make(people.tenant, Role.TEAM_LEAD, team=people.tenant.team)
    login(client, people.owner)
    edit = f"/budgets/channels/{channel.pk}/edit/"
    for garbage in ({"name": "ops", "target": "not-an-address"}, {"name": "", "target": "a@example.com"},
                    {"name": "ops", "target": "a@example.com\x00"}):  # fmt: skip
        assert client.post(edit, garbage).status_code == 400, garbage
    response = client.post(edit, {"name": "oncall", "target": "oncall@example.com", "is_active": "on"})
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.name, channel.target, channel.is_active) == ("oncall", "oncall@example.com", True)
    assert client.post(f"/budgets/channels/{theirs.pk}/delete/").status_code == 404
    for user, status in ((lead, 403), (people.finance, 403), (people.outsider, 404)):
        login(client, user)
        assert client.get(edit).status_code == status
        assert client.post(f"/budgets/channels/{channel.pk}/delete/").status_code == status
    login(client, people.owner)
    assert client.post(f"/budgets/channels/{channel.pk}/delete/").status_code == 302
    assert list(NotificationChannel.objects.values_list("pk", flat=True)) == [theirs.pk]


def test_api_deletes_rate_limits_and_channels_within_reach(people: People) -> None:
    limit = rate_limit_set(project=people.tenant.project, requests_per_minute=60)
    channel = channel_create(organization=people.tenant.org, name="ops", kind="email", target="ops@example.com")

    def api(user: User) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    for user, status in ((people.finance, 403), (people.outsider, 404)):
        assert api(user).delete(f"/api/rate-limits/{limit.pk}/").status_code == status
        assert api(user).delete(f"/api/channels/{channel.pk}/").status_code == status
    assert api(people.owner).delete("/api/rate-limits/not-a-number/").status_code == 404
    assert api(people.owner).delete(f"/api/rate-limits/{limit.pk}/").status_code == 204
    assert api(people.owner).delete(f"/api/channels/{channel.pk}/").status_code == 204
    assert not RateLimit.objects.exists() and not NotificationChannel.objects.exists()


def test_alerts_are_acknowledged_and_filtered(client: Client, people: People) -> None:
    budget = _budget(people)
    org = people.tenant.org.pk
    spike, _ = alert_raise(organization_id=org, kind=AlertKind.SPEND_ANOMALY, dedup_key="s1", message="m",
                           title="Spend rate spike: project x", project_id=people.tenant.project.pk)  # fmt: skip
    alert_raise(organization_id=org, kind=AlertKind.BUDGET_THRESHOLD, dedup_key="t1",
                title="Budget 'cap' reached 50%", message="m", budget=budget)  # fmt: skip
    theirs, _ = alert_raise(organization_id=people.other.org.pk, kind=AlertKind.SPEND_ANOMALY, dedup_key="o1",
                            title="Their spike", message="m")  # fmt: skip
    for user, status in ((people.member, 403), (people.finance, 403), (people.outsider, 404)):
        login(client, user)
        assert client.post(f"/alerts/{spike.pk}/acknowledge/").status_code == status
    login(client, people.owner)
    assert client.post(f"/alerts/{theirs.pk}/acknowledge/").status_code == 404
    assert client.post(f"/alerts/{spike.pk}/acknowledge/").status_code == 302
    assert client.post(f"/alerts/{spike.pk}/acknowledge/").status_code == 302  # twice: still the first
    spike.refresh_from_db()
    assert spike.acknowledged_by_id == people.owner.pk and spike.acknowledged_at is not None
    assert Alert.objects.filter(acknowledged_at__isnull=False).count() == 1

    def titles(query: dict[str, str]) -> str:
        return client.get("/alerts/", query).content.decode()

    assert "project x" in titles({"state": "acknowledged"}) and "reached 50%" not in titles({"state": "acknowledged"})
    assert "project x" not in titles({"state": "open"}) and "reached 50%" in titles({"state": "open"})
    assert "project x" not in titles({"kind": AlertKind.BUDGET_THRESHOLD})
    # Garbage filters are ignored, not a 500; another organisation's alerts never show.
    for garbage in ({"kind": "'; drop"}, {"state": "\x00"}, {"kind": "x" * 5000}):
        response = client.get("/alerts/", garbage)
        assert response.status_code == 200 and "Their spike" not in response.content.decode()


def test_alerts_are_acknowledged_through_the_api_with_the_pages_roles(people: People) -> None:
    budget = _budget(people)
    alert, _ = alert_raise(organization_id=people.tenant.org.pk, kind=AlertKind.BUDGET_THRESHOLD, dedup_key="a1",
                           title="Budget 'cap' reached 50%", message="m", budget=budget)  # fmt: skip
    theirs, _ = alert_raise(organization_id=people.other.org.pk, kind=AlertKind.SPEND_ANOMALY, dedup_key="o1",
                            title="Their spike", message="m")  # fmt: skip
    lead = member_make(people.tenant, Role.TEAM_LEAD, team=people.tenant.team)

    def api(user: User) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    url = f"/api/alerts/{alert.pk}/acknowledge/"
    for user, status in ((people.member, 403), (people.finance, 403), (people.outsider, 404)):
        assert api(user).post(url).status_code == status
    assert APIClient().post(url).status_code in (401, 403)
    assert api(people.owner).post(f"/api/alerts/{theirs.pk}/acknowledge/").status_code == 404
    assert api(people.owner).post("/api/alerts/not-a-number/acknowledge/").status_code == 404
    assert api(people.owner).get(url).status_code == 405
    assert not Alert.objects.filter(acknowledged_at__isnull=False).exists()
    first = api(lead).post(url, {"acknowledged_by": people.owner.pk, "garbage": "\x00" * 10}, format="json")
    assert first.status_code == 200
    assert first.json()["acknowledged_by"] == lead.pk and first.json()["acknowledged_at"]
    again = api(people.owner).post(url)  # twice: the first acknowledgement stays
    assert again.status_code == 200 and again.json()["acknowledged_by"] == lead.pk
    listed = {row["id"]: row for row in api(people.owner).get("/api/alerts/").json()["results"]}
    assert listed[alert.pk]["acknowledged_at"] == first.json()["acknowledged_at"]
    assert Alert.objects.get(pk=theirs.pk).acknowledged_at is None
