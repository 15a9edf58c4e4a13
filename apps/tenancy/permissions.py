"""Who may do what: the role matrix, as data, and the one function every view, form and API asks.

The matrix maps each action to the reach each role has for it:

- ``ORG``: everything of the member's organisation.
- ``TEAM``: what sits in the member's team: the team itself, its projects and whatever hangs off
  them (keys, budgets, rate limits, rules, cache, alerts). A member without a team reaches every
  team and project of the organisation, but never an organisation-level object.
- ``TEAM_PROJECTS``: only project-level objects of the member's team (a member without a team: of
  every project). Team-level objects (a team's budget) are organisation-wide settings: owner only.
- ``OWN``: ``TEAM`` narrowed to objects the member created (a developer's own keys).

Where an object sits (``placement``): organisation-level objects are providers, prices, channels,
deployments, organisation budgets and feature / end-user budgets not narrowed to a project;
team-level: a team and its budgets; project-level: a project, its keys, rate limits, routing rules,
cache policies and entries, and budgets on a project, a key or a feature / end user of a project.

How a refusal looks: an object the user cannot see at all (another organisation's, or another
team's for a team-scoped member) is a 404, so its existence does not leak; one they can see but
may not change is a 403. A referenced object in a form or API body that the user cannot see is an
invalid choice (400), exactly as if it did not exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied

from apps.tenancy.models import Membership, Organization, Project, Role, Team


class Reach(enum.Enum):
    ORG = "organisation"
    TEAM = "team"
    TEAM_PROJECTS = "team's projects"
    OWN = "own"


class Action(enum.StrEnum):
    # Reads. Seeing a project lets one read its ledger, keys, routing rules, deployments and reports.
    PROJECT_VIEW = "project.view"
    BUDGET_VIEW = "budget.view"  # budgets and their alerts
    CACHE_CONTENT_VIEW = "cache.content.view"  # cached prompts and answers
    SECRET_VIEW = "secret.view"  # channel targets and provider URLs unmasked
    AUDIT_VIEW = "audit.view"  # the audit log (and its CSV export)
    # What each saving lever would have saved (apps/opportunities): digests and sums, never prompts.
    OPPORTUNITY_VIEW = "opportunity.view"
    # Writes.
    PROJECT_CREATE = "project.create"  # object: the team it goes in, or the organisation for none
    PROJECT_MANAGE = "project.manage"  # aliases, default provider, rate limits, routing rules, cache
    KEY_ISSUE = "key.issue"
    KEY_REVOKE = "key.revoke"
    BUDGET_MANAGE = "budget.manage"  # create, change, pause
    ORG_MANAGE = "org.manage"  # providers, prices, channels, deployments, teams, members and their roles
    USAGE_IMPORT = "usage.import"  # object: the project it is booked to, or the organisation
    OPPORTUNITY_APPLY = "opportunity.apply"  # start a recommendation's trial, enable or stop it
    PRUNE_MANAGE = "prune.manage"  # what the gateway trims from a feature's requests (apps.routing.PrunePolicy)


OWNER, LEAD, DEV, FIN = Role.OWNER, Role.TEAM_LEAD, Role.DEVELOPER, Role.FINANCE

# Finance reads and exports everything of its organisation and appears in no write row. Lists are
# narrowed in SQL by the selectors (projects_for, budgets_visible, ...) from these same rows.
MATRIX: dict[Action, dict[str, Reach]] = {
    Action.PROJECT_VIEW: {OWNER: Reach.ORG, LEAD: Reach.TEAM, DEV: Reach.TEAM, FIN: Reach.ORG},
    Action.BUDGET_VIEW: {OWNER: Reach.ORG, LEAD: Reach.TEAM, DEV: Reach.TEAM, FIN: Reach.ORG},
    Action.CACHE_CONTENT_VIEW: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS},
    Action.SECRET_VIEW: {OWNER: Reach.ORG},
    Action.AUDIT_VIEW: {OWNER: Reach.ORG, FIN: Reach.ORG},
    Action.OPPORTUNITY_VIEW: {OWNER: Reach.ORG, LEAD: Reach.TEAM, DEV: Reach.TEAM, FIN: Reach.ORG},
    Action.PROJECT_CREATE: {OWNER: Reach.ORG, LEAD: Reach.TEAM},
    Action.PROJECT_MANAGE: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS},
    Action.KEY_ISSUE: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS, DEV: Reach.TEAM_PROJECTS},
    Action.KEY_REVOKE: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS, DEV: Reach.OWN},
    Action.BUDGET_MANAGE: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS},
    Action.ORG_MANAGE: {OWNER: Reach.ORG},
    Action.USAGE_IMPORT: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS},
    Action.OPPORTUNITY_APPLY: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS},
    Action.PRUNE_MANAGE: {OWNER: Reach.ORG, LEAD: Reach.TEAM_PROJECTS},
}


@dataclass(frozen=True)
class Placement:
    """Where an object sits: its organisation, its team (None: organisation-level), its creator."""

    organization_id: int
    team_id: int | None = None
    project_level: bool = False
    created_by_id: int | None = None
    # A project-level object of a project without a team: reachable by team-less members only.
    teamless_project: bool = False


def placement(obj: Any) -> Placement:
    """Where ``obj`` sits in the organisation chart (see the module docstring).

    Objects of other apps whose place is not simply their project's or organisation's (keys, budgets,
    alerts) say where they sit themselves, with a ``placement()`` method: those apps build on
    tenancy, never the other way round.
    """
    if isinstance(obj, Organization):
        return Placement(organization_id=obj.pk)
    if isinstance(obj, Team):
        return Placement(organization_id=obj.organization_id, team_id=obj.pk)
    if isinstance(obj, Project):
        return Placement(
            organization_id=obj.organization_id,
            team_id=obj.team_id,
            project_level=True,
            teamless_project=obj.team_id is None,
        )
    own = getattr(obj, "placement", None)
    if callable(own):
        return own()
    project = getattr(obj, "project", None)
    if isinstance(project, Project):  # rate limits, routing rules, cache policies and entries, batches
        return placement(project)
    organization_id = getattr(obj, "organization_id", None)
    if isinstance(organization_id, int):  # providers, channels, deployments, export jobs
        return Placement(organization_id=organization_id)
    provider = getattr(obj, "provider", None)
    if provider is not None:  # prices
        return Placement(organization_id=provider.organization_id)
    raise TypeError(f"no placement for {type(obj).__name__}")


def with_creator(place: Placement, created_by_id: int | None) -> Placement:
    return Placement(
        organization_id=place.organization_id,
        team_id=place.team_id,
        project_level=place.project_level,
        created_by_id=created_by_id,
        teamless_project=place.teamless_project,
    )


def memberships(user: User | AnonymousUser) -> dict[int, Membership]:
    """The user's memberships by organisation id, loaded once per request (cached on the user)."""
    if not user.is_authenticated:
        return {}
    cached: dict[int, Membership] | None = getattr(user, "_cc_memberships", None)
    if cached is None:
        cached = {m.organization_id: m for m in Membership.objects.filter(user=user).select_related("team")}
        setattr(user, "_cc_memberships", cached)  # noqa: B010  (an attribute of this request's user only)
    return cached


def reaches(membership: Membership, reach: Reach, place: Placement, user_id: int | None) -> bool:
    """Whether a member with this reach gets to an object placed at ``place`` (same organisation)."""
    if reach is Reach.ORG:
        return True
    if reach is Reach.TEAM_PROJECTS and not place.project_level:
        return False
    if membership.team_id is None:
        # A member without a team reaches every team and project, never organisation-level objects.
        in_team = place.team_id is not None or place.teamless_project
    else:
        in_team = place.team_id == membership.team_id
    if reach is Reach.OWN:
        return in_team and place.created_by_id == user_id
    return in_team


def can(user: User | AnonymousUser, action: Action, obj: Any) -> bool:
    """Whether ``user`` may do ``action`` on ``obj`` (a model instance; saved or not)."""
    place = placement(obj)
    membership = memberships(user).get(place.organization_id)
    if membership is None:
        return False
    reach = MATRIX[action].get(membership.role)
    return reach is not None and reaches(membership, reach, place, user.pk)


def require(user: User | AnonymousUser, action: Action, obj: Any) -> None:
    """``can`` or a 403 (Django's PermissionDenied; DRF turns it into its own 403 too)."""
    if not can(user, action, obj):
        raise PermissionDenied(f"Your role does not allow {action.value} here.")


def can_anywhere(user: User | AnonymousUser, action: Action, organization: Organization | None = None) -> bool:
    """Whether ``user`` may do ``action`` on something (in ``organization``): decides which forms to show."""
    for org_id, membership in memberships(user).items():
        if organization is not None and org_id != organization.pk:
            continue
        if membership.role in MATRIX[action]:
            return True
    return False


def mask(value: str) -> str:
    """A secret-bearing value (webhook URL, e-mail list, provider URL) as shown to non-owners.

    URLs keep their scheme and host, so people can tell which service it is: ``https://hooks.slack.com/…****``;
    e-mail addresses keep their domain: ``…@example.com``; anything else becomes ``****``.
    """
    value = value.strip()
    if not value:
        return ""
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        return f"{scheme}://{host}/…****"
    if "@" in value:
        return ", ".join(f"…@{address.rsplit('@', 1)[-1].strip()}" for address in value.split(","))
    return "****"


def shown(user: User | AnonymousUser, value: str, obj: Any) -> str:
    """``value`` in full for those who may see secrets of ``obj``'s organisation (owners), else masked."""
    return value if can(user, Action.SECRET_VIEW, obj) else mask(value)
