"""Every page that hides its controls from a role says why, with the one shared note
(templates/includes/read_only_note.html); whoever may change things sees no note."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from apps.budgets.models import AlertKind, BudgetScope
from apps.budgets.services import alert_raise, budget_create
from apps.routing.services import rule_save
from apps.tenancy.models import Role
from tests.deployments.helpers import deployment_make
from tests.factories import Tenant, login, member_make, tenant_make

pytestmark = pytest.mark.django_db

NOTE = 'id="read-only-note"'


def _pages(tenant: Tenant) -> list[str]:
    project, org = tenant.project, tenant.org
    budget = budget_create(
        organization=org, name="p", scope=BudgetScope.PROJECT, project=project, amount_usd=Decimal(5)
    )
    alert_raise(organization_id=org.pk, kind=AlertKind.SPEND_ANOMALY, dedup_key="ro", title="Spike",
                message="m", project_id=project.pk)  # fmt: skip
    rule = rule_save(project=project, fields={"name": "first"}, primaries=[], fallbacks=[], shadow=[])
    deployment = deployment_make(org)
    slug = project.slug
    return [
        reverse("dashboard:project", kwargs={"slug": slug}),
        reverse("dashboard:providers", kwargs={"org_slug": org.slug}),
        reverse("routing:rules", kwargs={"slug": slug}),
        reverse("routing:rule", kwargs={"slug": slug, "pk": rule.pk}),
        reverse("cache:project", kwargs={"slug": slug}),
        reverse("deployments:list", kwargs={"slug": slug}),
        reverse("deployments:detail", kwargs={"slug": slug, "pk": deployment.pk}),
        reverse("budgets:list"),
        reverse("budgets:detail", kwargs={"pk": budget.pk}),
        reverse("budgets:alerts"),
    ]


@pytest.mark.parametrize("role", [Role.FINANCE, Role.DEVELOPER])
def test_read_only_roles_are_told_why_controls_are_missing_on_every_page(client: Client, role: str) -> None:
    tenant = tenant_make()
    pages = _pages(tenant)
    login(client, member_make(tenant, role, team=tenant.team if role == Role.DEVELOPER else None))
    for url in pages:
        html = client.get(url).content.decode()
        assert html.count(NOTE) == 1, url
        note = html[html.index(NOTE) :]
        assert "Your role can read" in note[:400] and "Ask one of them." in note[:600], url


def test_whoever_may_change_a_page_sees_no_read_only_note(client: Client) -> None:
    tenant = tenant_make()
    pages = _pages(tenant)
    owner: User = tenant.owner
    login(client, owner)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert NOTE not in response.content.decode(), url


def test_an_outsider_gets_404_not_a_note(client: Client) -> None:
    tenant = tenant_make()
    pages = _pages(tenant)
    login(client, tenant_make().owner)
    for url in pages:
        if url in (reverse("budgets:list"), reverse("budgets:alerts")):
            continue  # lists: the outsider sees their own organisation's, with nothing of this tenant's
        assert client.get(url).status_code == 404, url
