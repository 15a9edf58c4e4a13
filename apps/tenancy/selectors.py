"""What a person may see: every page and API scopes its queries through here."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from apps.tenancy.models import Membership, Organization, Project
from apps.tenancy.permissions import MATRIX, Action, Reach, can, can_anywhere, memberships


def memberships_for(*, user: User | AnonymousUser) -> QuerySet[Membership]:
    if not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.filter(user=user).select_related("organization", "team")


def organizations_for(*, user: User | AnonymousUser) -> QuerySet[Organization]:
    if not user.is_authenticated:
        return Organization.objects.none()
    return Organization.objects.filter(memberships__user=user).order_by("name")


def reach_q(*, user: User | AnonymousUser, action: Action, org: str, team: Callable[[int], Q], teamless: Q) -> Q | None:
    """The rows ``user`` reaches for ``action``, from the matrix, as one filter (None: no row at all).

    ``org`` names the organisation column, ``team(T)`` matches the rows placed in team T and
    ``teamless`` the rows a member without a team reaches (every row but organisation-level ones).
    """
    visible = Q()
    for org_id, membership in memberships(user).items():
        reach = MATRIX[action].get(membership.role)
        if reach is None:
            continue
        here = Q(**{org: org_id})
        if reach is Reach.ORG:
            visible |= here
        elif membership.team_id is None:
            visible |= here & teamless
        else:
            visible |= here & team(membership.team_id)
    return visible or None


def projects_for(*, user: User | AnonymousUser) -> QuerySet[Project]:
    """Projects ``user`` may see: the whole organisation for owners and finance (and members without a
    team), else their team's."""
    visible = reach_q(
        user=user, action=Action.PROJECT_VIEW, org="organization_id", team=lambda t: Q(team_id=t), teamless=Q()
    )
    if visible is None:
        return Project.objects.none()
    return Project.objects.filter(visible).select_related("organization", "team").order_by("organization__name", "name")


def organizations_where(*, user: User | AnonymousUser, action: Action) -> QuerySet[Organization]:
    """The user's organisations in which their role allows ``action`` on at least something."""
    ids = [org.pk for org in organizations_for(user=user) if can_anywhere(user, action, org)]
    return Organization.objects.filter(pk__in=ids).order_by("name")


def projects_where(*, user: User | AnonymousUser, action: Action) -> QuerySet[Project]:
    """The projects the user sees and may do ``action`` on."""
    ids = [project.pk for project in projects_for(user=user) if can(user, action, project)]
    return Project.objects.filter(pk__in=ids).select_related("organization", "team").order_by("name")
