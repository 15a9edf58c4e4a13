"""Reading the audit log: owners and finance, each the events of their own organisations."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Q, QuerySet

from apps.audit.models import AuditEvent
from apps.tenancy.permissions import Action
from apps.tenancy.selectors import reach_q


@dataclass(frozen=True)
class AuditFilters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None  # exclusive
    actor: str = ""  # the actor's name as recorded (a user name, or "manage.py …")
    object_type: str = ""
    action: str = ""
    organization: str = ""  # slug


def audit_events_for(*, user: User | AnonymousUser, filters: AuditFilters | None = None) -> QuerySet[AuditEvent]:
    """The events ``user`` may read (their organisations where they are owner or finance), newest first."""
    visible = reach_q(
        user=user,
        action=Action.AUDIT_VIEW,
        org="organization_id",
        # Only organisation-wide reaches read the log: no team-scoped row exists.
        team=lambda _team_id: Q(pk__in=[]),
        teamless=Q(pk__in=[]),
    )
    if visible is None:
        return AuditEvent.objects.none()
    events = AuditEvent.objects.filter(visible)
    f = filters or AuditFilters()
    if f.since is not None:
        events = events.filter(at__gte=f.since)
    if f.until is not None:
        events = events.filter(at__lt=f.until)
    if f.actor:
        events = events.filter(actor_label__iexact=f.actor)
    if f.object_type:
        events = events.filter(object_type=f.object_type)
    if f.action:
        events = events.filter(action=f.action)
    if f.organization:
        events = events.filter(organization__slug=f.organization)
    return events.select_related("organization").order_by("-at", "-id")


EXPORT_HEADER = [
    "at", "organization", "actor", "surface", "action", "object_type", "object_id", "object", "before", "after",
]  # fmt: skip


def audit_export_rows(*, events: QuerySet[AuditEvent]) -> Iterator[list[Any]]:
    """The header, then one row per event (the diff's two sides as JSON), streamed in chunks."""
    yield EXPORT_HEADER
    # In a transaction the server-side cursor is declared WITHOUT HOLD and rows come as they are fetched;
    # a holdable one (autocommit) is computed whole before the first row (see ledger_export_rows).
    with transaction.atomic():
        yield from (_export_row(event) for event in events.iterator(chunk_size=2000))


def _export_row(event: AuditEvent) -> list[Any]:
    return [
        event.at.isoformat(),
        event.organization.slug if event.organization else "",
        event.actor_label,
        event.surface,
        event.action,
        event.object_type,
        event.object_id,
        event.object_repr,
        json.dumps(event.diff.get("before"), sort_keys=True),
        json.dumps(event.diff.get("after"), sort_keys=True),
    ]
