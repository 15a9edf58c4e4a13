"""What a person may see: every page and API scopes its queries through here."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from apps.tenancy.models import MANAGER_ROLES, Membership, Organization, Project, Role

# Roles that see every project of their organisation, whatever team they are in.
ORG_WIDE_ROLES = frozenset({Role.OWNER, Role.FINANCE})


def memberships_for(*, user: User | AnonymousUser) -> QuerySet[Membership]:
    if not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.filter(user=user).select_related("organization", "team")


def organizations_for(*, user: User | AnonymousUser) -> QuerySet[Organization]:
    if not user.is_authenticated:
        return Organization.objects.none()
    return Organization.objects.filter(memberships__user=user).order_by("name")


def projects_for(*, user: User | AnonymousUser) -> QuerySet[Project]:
    """Projects ``user`` may see: org-wide for owners and finance, else their team's (or all without a team)."""
    if not user.is_authenticated:
        return Project.objects.none()
    visible = Q()
    for membership in memberships_for(user=user):
        if membership.role in ORG_WIDE_ROLES or membership.team_id is None:
            visible |= Q(organization_id=membership.organization_id)
        else:
            visible |= Q(organization_id=membership.organization_id, team_id=membership.team_id)
    if not visible:
        return Project.objects.none()
    return Project.objects.filter(visible).select_related("organization", "team").order_by("organization__name", "name")


def membership_in(*, user: User | AnonymousUser, organization_id: int) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, organization_id=organization_id).first()


def can_manage_project(*, user: User | AnonymousUser, project: Project) -> bool:
    membership = membership_in(user=user, organization_id=project.organization_id)
    return (
        membership is not None
        and membership.role in MANAGER_ROLES
        and projects_for(user=user).filter(pk=project.pk).exists()
    )


def can_issue_keys(*, user: User | AnonymousUser, project: Project) -> bool:
    """Managers and developers issue keys for projects they see; finance never."""
    membership = membership_in(user=user, organization_id=project.organization_id)
    if membership is None or membership.role == Role.FINANCE:
        return False
    return projects_for(user=user).filter(pk=project.pk).exists()


def can_manage_organization(*, user: User | AnonymousUser, organization_id: int) -> bool:
    membership = membership_in(user=user, organization_id=organization_id)
    return membership is not None and membership.role in MANAGER_ROLES
