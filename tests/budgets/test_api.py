"""The budgets API: scoped to the caller's organisations, writes for managers only."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from apps.budgets.models import Budget, BudgetScope, NotificationChannel
from apps.budgets.services import budget_create
from apps.tenancy.models import Role
from tests.factories import member_make, tenant_make

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_owner_creates_budget_and_reads_status() -> None:
    tenant = tenant_make()
    response = _client(tenant.owner).post(
        "/api/budgets/",
        {"organization": tenant.org.slug, "name": "Prod cap", "scope": "project", "project": tenant.project.slug,
         "amount_usd": "25.00", "period": "monthly", "timezone": "Europe/Paris", "mode": "hard",
         "alert_thresholds": [50, 80, 100]},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    budget = Budget.objects.get(id=response.json()["id"])
    assert (budget.project, budget.amount_usd, budget.timezone) == (tenant.project, Decimal("25.00"), "Europe/Paris")
    status = _client(tenant.owner).get(f"/api/budgets/{budget.id}/status/").json()
    assert status["spent_usd"] == "0" and status["percent_used"] == 0.0


def test_invalid_budget_gets_field_errors_not_500() -> None:
    tenant = tenant_make()
    client = _client(tenant.owner)
    base = {"organization": tenant.org.slug, "name": "x", "amount_usd": "5"}
    assert client.post("/api/budgets/", {**base, "scope": "project"}, format="json").status_code == 400
    bad_tz = client.post("/api/budgets/", {**base, "scope": "organization", "timezone": "Mars/Base"}, format="json")
    assert bad_tz.status_code == 400 and "timezone" in bad_tz.json()["error"]["fields"]
    negative = client.post("/api/budgets/", {**base, "scope": "organization", "amount_usd": "-1"}, format="json")
    assert negative.status_code == 400 and "amount_usd" in negative.json()["error"]["fields"]


def test_outsider_sees_nothing_and_gets_404() -> None:
    tenant, other = tenant_make(), tenant_make()
    budget = budget_create(organization=tenant.org, name="b", scope=BudgetScope.ORGANIZATION, amount_usd=Decimal(1))
    outsider = _client(other.owner)
    assert outsider.get("/api/budgets/").json()["results"] == []
    assert outsider.get(f"/api/budgets/{budget.id}/").status_code == 404
    assert outsider.get(f"/api/budgets/{budget.id}/status/").status_code == 404
    assert outsider.delete(f"/api/budgets/{budget.id}/").status_code == 404
    # Naming another tenant's project when creating is refused.
    response = outsider.post(
        "/api/budgets/",
        {"organization": tenant.org.slug, "name": "steal", "scope": "organization", "amount_usd": "1"},
        format="json",
    )
    assert response.status_code == 400


def test_finance_reads_but_cannot_write() -> None:
    tenant = tenant_make()
    finance = _client(member_make(tenant, Role.FINANCE))
    budget_create(organization=tenant.org, name="b", scope=BudgetScope.ORGANIZATION, amount_usd=Decimal(1))
    assert len(finance.get("/api/budgets/").json()["results"]) == 1
    response = finance.post(
        "/api/budgets/",
        {"organization": tenant.org.slug, "name": "n", "scope": "organization", "amount_usd": "1"},
        format="json",
    )
    assert response.status_code == 403


def test_channel_secret_is_write_only() -> None:
    tenant = tenant_make()
    client = _client(tenant.owner)
    response = client.post(
        "/api/channels/",
        {"organization": tenant.org.slug, "name": "hook", "kind": "webhook", "target": "http://127.0.0.1:9/h",
         "secret": "s3cr3t-value"},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201
    assert "s3cr3t-value" not in response.content.decode()
    assert "s3cr3t-value" not in client.get("/api/channels/").content.decode()
    channel = NotificationChannel.objects.get()
    assert channel.secret == "s3cr3t-value" and "s3cr3t-value" not in channel.secret_encrypted


def test_rate_limit_upsert_per_project() -> None:
    tenant = tenant_make()
    client = _client(tenant.owner)
    for rpm in (100, 200):
        response = client.post(
            "/api/rate-limits/", {"project": tenant.project.slug, "requests_per_minute": rpm}, format="json"
        )
        assert response.status_code == 201, response.content
    rows = client.get("/api/rate-limits/").json()["results"]
    assert [r["requests_per_minute"] for r in rows] == [200]
