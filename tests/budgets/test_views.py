"""Budget and alert pages: forms with errors, roles, outsiders."""

from __future__ import annotations

from decimal import Decimal

from django.test import Client

from apps.budgets.models import Budget, BudgetScope, NotificationChannel, RateLimit
from apps.budgets.services import alert_raise, budget_create
from tests.factories import People, entry_make, login


def test_owner_creates_budget_and_sees_spend_against_it(client: Client, people: People) -> None:
    login(client, people.owner)
    response = client.post(
        "/budgets/new/",
        {"organization": people.tenant.org.id, "name": "Support bot cap", "scope": "project",
         "project": people.tenant.project.id, "amount_usd": "10", "period": "monthly", "timezone": "UTC",
         "mode": "hard", "alert_thresholds": "50, 80, 100"},
    )  # fmt: skip
    budget = Budget.objects.get(name="Support bot cap")
    assert response.status_code == 302 and response.url == f"/budgets/{budget.id}/"
    assert budget.alert_thresholds == [50, 80, 100]
    entry_make(people.tenant, cost=Decimal("2.5"))
    page = client.get(f"/budgets/{budget.id}/").content.decode()
    assert "$2.5000" in page and "25.0%" in page
    listing = client.get("/budgets/").content.decode()
    assert "Support bot cap" in listing and "$10.00" in listing


def test_bad_budget_form_shows_field_errors(client: Client, people: People) -> None:
    login(client, people.owner)
    response = client.post(
        "/budgets/new/",
        {"organization": people.tenant.org.id, "name": "x", "scope": "project", "amount_usd": "-5",
         "period": "monthly", "timezone": "Mars/Olympus", "mode": "hard", "alert_thresholds": "fifty"},
    )  # fmt: skip
    assert response.status_code == 400
    form = response.context["budget_form"]
    assert {"amount_usd", "timezone", "alert_thresholds"} <= set(form.errors)
    assert not Budget.objects.exists()


def test_project_budget_without_project_is_a_form_error(client: Client, people: People) -> None:
    login(client, people.owner)
    response = client.post(
        "/budgets/new/",
        {"organization": people.tenant.org.id, "name": "x", "scope": "project", "amount_usd": "5",
         "period": "monthly", "timezone": "UTC", "mode": "hard", "alert_thresholds": ""},
    )  # fmt: skip
    assert response.status_code == 400 and "project" in response.context["budget_form"].errors


def test_finance_reads_and_cannot_write(client: Client, people: People) -> None:
    budget = budget_create(
        organization=people.tenant.org, name="org cap", scope=BudgetScope.ORGANIZATION, amount_usd=Decimal(100)
    )
    login(client, people.finance)
    assert "org cap" in client.get("/budgets/").content.decode()
    assert client.get(f"/budgets/{budget.id}/").status_code == 200
    assert client.post(f"/budgets/{budget.id}/toggle/").status_code == 403
    post = {"organization": people.tenant.org.id, "name": "n", "scope": "organization", "amount_usd": "1",
            "period": "monthly", "timezone": "UTC", "mode": "hard"}  # fmt: skip
    assert client.post("/budgets/new/", post).status_code == 403
    assert client.post("/budgets/limits/new/", {"project": people.tenant.project.id}).status_code == 403


def test_outsider_gets_404_and_sees_no_alerts(client: Client, people: People) -> None:
    budget = budget_create(
        organization=people.tenant.org, name="secret cap", scope=BudgetScope.ORGANIZATION, amount_usd=Decimal(1)
    )
    alert_raise(organization_id=people.tenant.org.id, kind="budget_threshold", dedup_key="x", title="Secret alert",
                message="m")  # fmt: skip
    login(client, people.outsider)
    assert client.get(f"/budgets/{budget.id}/").status_code == 404
    assert client.post(f"/budgets/{budget.id}/toggle/").status_code == 404
    assert "secret cap" not in client.get("/budgets/").content.decode()
    assert "Secret alert" not in client.get("/alerts/").content.decode()


def test_rate_limit_and_channel_forms(client: Client, people: People) -> None:
    login(client, people.owner)
    response = client.post("/budgets/limits/new/", {"project": people.tenant.project.id, "requests_per_minute": "60"})
    assert response.status_code == 302
    assert RateLimit.objects.get().requests_per_minute == 60
    empty = client.post("/budgets/limits/new/", {"project": people.tenant.project.id})
    assert empty.status_code == 400
    bad = client.post(
        "/budgets/channels/new/",
        {"organization": people.tenant.org.id, "name": "ops", "kind": "email", "target": "not-an-address"},
    )
    assert bad.status_code == 400 and "target" in bad.context["channel_form"].errors
    inward = client.post(
        "/budgets/channels/new/",
        {"organization": people.tenant.org.id, "name": "meta", "kind": "webhook",
         "target": "http://169.254.169.254/latest/meta-data/"},
    )  # fmt: skip
    assert inward.status_code == 400 and "link-local" in str(inward.context["channel_form"].errors["target"])
    good = client.post(
        "/budgets/channels/new/",
        {"organization": people.tenant.org.id, "name": "hook", "kind": "webhook", "target": "http://127.0.0.1:9/x",
         "secret": "topsecret"},
    )  # fmt: skip
    assert good.status_code == 302
    assert NotificationChannel.objects.get().secret == "topsecret"
    assert "topsecret" not in client.get("/budgets/").content.decode()


def test_budget_list_queries_do_not_grow_with_budgets(
    client: Client, people: People, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    login(client, people.owner)
    for n in range(3):
        budget_create(organization=people.tenant.org, name=f"b{n}", scope=BudgetScope.ORGANIZATION, amount_usd=1)
    # 22: the forms also look up whether the user has a single organisation, to preselect it.
    with django_assert_max_num_queries(22):
        client.get("/budgets/")
    for n in range(3, 30):
        budget_create(organization=people.tenant.org, name=f"b{n}", scope=BudgetScope.ORGANIZATION, amount_usd=1)
    with django_assert_max_num_queries(22):
        assert client.get("/budgets/").status_code == 200
