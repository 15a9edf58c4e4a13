"""Rows for tests, made through the same services the product uses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from django.contrib.auth.models import User

from apps.keys.services import IssuedKey, key_issue
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import provider_create
from apps.tenancy.models import Organization, Project, Role, Team
from apps.tenancy.services import membership_set, organization_create, project_create, team_create

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
    project.default_provider = provider
    project.save()
    key = key_issue(project=project, name="test key")
    return Tenant(org=org, team=team, project=project, provider=provider, key=key, owner=owner)


def member_make(tenant: Tenant, role: str = Role.DEVELOPER, *, team: Team | None = None) -> User:
    user = user_make()
    membership_set(organization=tenant.org, user=user, role=role, team=team)
    return user
