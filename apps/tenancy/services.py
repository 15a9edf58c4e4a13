"""Creating organisations, teams, projects and memberships."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from apps.tenancy.models import Membership, Organization, Project, Role, Team

if TYPE_CHECKING:
    from apps.providers.models import Provider


def organization_create(*, name: str, owner: User | None = None, slug: str = "") -> Organization:
    org = Organization(name=name, slug=slug or slugify(name))
    org.full_clean()
    with transaction.atomic():
        org.save()
        if owner is not None:
            membership_set(organization=org, user=owner, role=Role.OWNER)
    return org


def team_create(*, organization: Organization, name: str, slug: str = "") -> Team:
    team = Team(organization=organization, name=name, slug=slug or slugify(name))
    team.full_clean()
    team.save()
    return team


def project_create(*, organization: Organization, name: str, slug: str = "", team: Team | None = None) -> Project:
    project = Project(organization=organization, name=name, slug=slug or slugify(name), team=team)
    project.full_clean()
    project.save()
    return project


def project_set_default_provider(*, project: Project, provider: Provider | None) -> Project:
    """Which provider serves plain model names for ``project`` when several could."""
    if provider is not None and provider.organization_id != project.organization_id:
        raise ValidationError({"default_provider": "That provider belongs to another organisation."})
    project.default_provider = provider
    project.full_clean()
    project.save(update_fields=["default_provider"])
    return project


def membership_set(*, organization: Organization, user: User, role: str, team: Team | None = None) -> Membership:
    """Give ``user`` a role in ``organization`` (replacing any earlier one)."""
    membership, _ = Membership.objects.update_or_create(
        user=user, organization=organization, defaults={"role": role, "team": team}
    )
    membership.full_clean()
    return membership
