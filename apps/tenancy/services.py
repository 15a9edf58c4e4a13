"""Creating organisations, teams, projects and memberships. Every change is audited."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_saved, audit_snapshot, audit_stored
from apps.tenancy.models import Membership, Organization, Project, Role, Team

if TYPE_CHECKING:
    from apps.providers.models import Provider


@transaction.atomic
def organization_create(*, name: str, owner: User | None = None, slug: str = "") -> Organization:
    org = Organization(name=name, slug=slug or slugify(name))
    org.full_clean()
    org.save()
    audit_record(action=AuditAction.CREATE, obj=org, after=audit_snapshot(org))
    if owner is not None:
        membership_set(organization=org, user=owner, role=Role.OWNER)
    return org


@transaction.atomic
def team_create(*, organization: Organization, name: str, slug: str = "") -> Team:
    team = Team(organization=organization, name=name, slug=slug or slugify(name))
    team.full_clean()
    team.save()
    audit_record(action=AuditAction.CREATE, obj=team, after=audit_snapshot(team))
    return team


@transaction.atomic
def team_update(*, team: Team, name: str) -> Team:
    before = audit_snapshot(team)
    team.name = name
    team.full_clean()
    team.save(update_fields=["name"])
    audit_record(action=AuditAction.UPDATE, obj=team, before=before, after=audit_snapshot(team))
    return team


@transaction.atomic
def project_create(*, organization: Organization, name: str, slug: str = "", team: Team | None = None) -> Project:
    if team is not None and team.organization_id != organization.pk:
        raise ValidationError({"team": "That team belongs to another organisation."})
    project = Project(organization=organization, name=name, slug=slug or slugify(name), team=team)
    project.full_clean()
    project.save()
    audit_record(action=AuditAction.CREATE, obj=project, after=audit_snapshot(project))
    return project


@transaction.atomic
def project_update(*, project: Project, name: str, team: Team | None) -> Project:
    """Rename a project or move it to another team of its organisation (or to none)."""
    if team is not None and team.organization_id != project.organization_id:
        raise ValidationError({"team": "That team belongs to another organisation."})
    before = audit_snapshot(project)
    project.name, project.team = name, team
    project.full_clean()
    project.save(update_fields=["name", "team"])
    audit_record(action=AuditAction.UPDATE, obj=project, before=before, after=audit_snapshot(project))
    return project


@transaction.atomic
def project_set_default_provider(*, project: Project, provider: Provider | None) -> Project:
    """Which provider serves plain model names for ``project`` when several could."""
    if provider is not None and provider.organization_id != project.organization_id:
        raise ValidationError({"default_provider": "That provider belongs to another organisation."})
    before = audit_snapshot(project)
    project.default_provider = provider
    project.full_clean()
    project.save(update_fields=["default_provider"])
    audit_record(action=AuditAction.UPDATE, obj=project, before=before, after=audit_snapshot(project))
    return project


@transaction.atomic
def membership_set(*, organization: Organization, user: User, role: str, team: Team | None = None) -> Membership:
    """Give ``user`` a role in ``organization`` (replacing any earlier one).

    The last owner of an organisation cannot be demoted: someone must remain who may manage it.
    """
    if team is not None and team.organization_id != organization.pk:
        raise ValidationError({"team": "That team belongs to another organisation."})
    _lock_memberships(organization)
    existing = Membership.objects.filter(user=user, organization=organization).first()
    before = audit_stored(existing)
    if existing is not None and existing.role == Role.OWNER and role != Role.OWNER:
        _keep_an_owner(organization, leaving=existing)
    membership = existing or Membership(user=user, organization=organization)
    membership.role, membership.team = role, team
    membership.full_clean()
    membership.save()
    audit_saved(obj=membership, before=before)
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Take ``membership``'s user out of its organisation (never its last owner)."""
    _lock_memberships(membership.organization)
    membership.refresh_from_db(fields=["role"])
    if membership.role == Role.OWNER:
        _keep_an_owner(membership.organization, leaving=membership)
    before = audit_snapshot(membership)
    audit_record(action=AuditAction.DELETE, obj=membership, before=before)
    membership.delete()


def _lock_memberships(organization: Organization) -> None:
    """Changes to one organisation's memberships run one at a time (two owners demoting each other at
    once would otherwise each see the other still an owner), on the organisation's row."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()


def _keep_an_owner(organization: Organization, *, leaving: Membership) -> None:
    owners = Membership.objects.filter(organization=organization, role=Role.OWNER)
    if not owners.exclude(pk=leaving.pk).exists():
        raise ValidationError({"role": "This is the organisation's last owner: make someone else owner first."})
