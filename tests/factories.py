"""Rows for tests, made through the same services the product uses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.test import Client
from django.utils import timezone

from apps.keys.services import IssuedKey, key_issue
from apps.ledger.models import LedgerEntry
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import provider_create
from apps.tenancy.models import Organization, Project, Role, Team
from apps.tenancy.services import (
    membership_set,
    organization_create,
    project_create,
    project_set_default_provider,
    team_create,
)

_seq = itertools.count(1)

PASSWORD = "correct horse battery staple"


def user_make(username: str = "") -> User:
    return User.objects.create_user(username=username or f"user{next(_seq)}", password=PASSWORD)


@dataclass
class Tenant:
    """An organisation with one team, one project on a simulated provider, and one key."""

    org: Organization
    team: Team
    project: Project
    provider: Provider
    key: IssuedKey
    owner: User


def tenant_make(*, upstream_url: str = "http://127.0.0.1:9/v1", name: str = "") -> Tenant:
    n = next(_seq)
    name = name or f"org{n}"
    owner = user_make(f"{name}-owner")
    org = organization_create(name=name, owner=owner)
    team = team_create(organization=org, name=f"team {n}")
    provider = provider_create(organization=org, name="sim", kind=ProviderKind.SIMULATED, base_url=upstream_url)
    project = project_create(organization=org, name=f"project {n}", slug=f"{name}-project", team=team)
    project_set_default_provider(project=project, provider=provider)
    key = key_issue(project=project, name="test key")
    return Tenant(org=org, team=team, project=project, provider=provider, key=key, owner=owner)


def member_make(tenant: Tenant, role: str = Role.DEVELOPER, *, team: Team | None = None) -> User:
    user = user_make()
    membership_set(organization=tenant.org, user=user, role=role, team=team)
    return user


@dataclass
class People:
    """Named people of one organisation, plus an outsider from another."""

    tenant: Tenant
    other: Tenant  # another organisation; its owner is the outsider
    owner: User
    member: User
    finance: User
    outsider: User


def people_make() -> People:
    tenant, other = tenant_make(), tenant_make()
    return People(
        tenant=tenant,
        other=other,
        owner=tenant.owner,
        member=member_make(tenant, Role.DEVELOPER, team=tenant.team),
        finance=member_make(tenant, Role.FINANCE),
        outsider=other.owner,
    )


def login(client: Client, user: User) -> Client:
    """A real password login. django-axes (login throttling) needs a request to count attempts against;
    the test Client's login() passes none of its own."""
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "127.0.0.1"
    assert client.login(request=request, username=user.username, password=PASSWORD)
    return client


def entry_make(tenant: Tenant, **fields: Any) -> LedgerEntry:
    """A ledger row as the ingest would write it; override any field."""
    values: dict[str, Any] = {
        "request_id": f"req-{next(_seq)}-{timezone.now().timestamp()}",
        "created_at": timezone.now(),
        "organization": tenant.org,
        "project": tenant.project,
        "api_key": tenant.key.api_key,
        "provider": tenant.provider,
        "endpoint": "chat.completions",
        "requested_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "status_code": 200,
        "cost": Decimal("0.000027"),
        "counterfactual_cost": Decimal("0.000050"),
        "latency_ms": 120,
    }
    values.update(fields)
    return LedgerEntry.objects.create(**values)
