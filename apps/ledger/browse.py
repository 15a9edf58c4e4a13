"""Reading the ledger a page at a time, at any size: keyset pages and totals that never scan it all.

A ledger of a hundred million rows cannot be counted or offset into on every
page view. So a page starts where the last one ended, on the ``(created_at,
id)`` order of the ledger's indexes (an opaque, signed cursor carries that
position), and the totals above it come from the hourly roll-ups plus the few
rows ingested since they last ran. Where the filters are finer than the
roll-ups (a status, a model matched as requested or served, two dimensions at
once), the totals add up the newest ``TOTALS_SCAN_LIMIT`` matching rows only,
and say so.

Every read here starts from ``ledger_entries``, which is scoped by the caller's
projects: a cursor positions a page, it never widens what a person may see.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.db.models import Count, Q, QuerySet

from apps.ledger.models import Dimension, LedgerEntry, ProjectHourlyRollup, RollupWatermark, SliceHourlyRollup
from apps.ledger.selectors import (
    LedgerFilters,
    LedgerTotals,
    key_matches,
    ledger_entries,
    ledger_totals,
    totals_aggregates,
)
from apps.tenancy.selectors import projects_for

CURSOR_SALT = "apps.ledger.browse.cursor"
TOTALS_SCAN_LIMIT = 10_000
PAGE_SIZE_MAX = 500


class InvalidCursor(ValueError):
    """A cursor that this server did not issue, or that was altered."""


@dataclass(frozen=True)
class LedgerCursor:
    """A position in the ledger's newest-first order, and which way the page from it goes."""

    created_at: dt.datetime
    id: int
    newer: bool  # True: the rows just newer than this position; False: just older

    def token(self) -> str:
        return signing.dumps([self.created_at.isoformat(), self.id, int(self.newer)], salt=CURSOR_SALT, compress=False)

    @classmethod
    def from_token(cls, token: str) -> LedgerCursor:
        if len(token) > 300:
            raise InvalidCursor("too long")
        try:
            created_at, entry_id, newer = signing.loads(token, salt=CURSOR_SALT)
            moment = dt.datetime.fromisoformat(created_at)
        except (signing.BadSignature, ValueError, TypeError) as exc:
            raise InvalidCursor(str(exc)) from None
        if moment.tzinfo is None or type(entry_id) is not int or newer not in (0, 1):
            raise InvalidCursor("malformed")
        return cls(created_at=moment, id=entry_id, newer=bool(newer))


@dataclass(frozen=True)
class LedgerPage:
    rows: list[LedgerEntry]
    newer: LedgerCursor | None  # None: these are the newest rows
    older: LedgerCursor | None  # None: nothing older matches


def _at(entry: LedgerEntry, *, newer: bool) -> LedgerCursor:
    return LedgerCursor(created_at=entry.created_at, id=entry.pk, newer=newer)


def ledger_page(*, entries: QuerySet[LedgerEntry], cursor: LedgerCursor | None, size: int) -> LedgerPage:
    """``size`` rows of ``entries`` (newest first) from ``cursor``, and the cursors of the pages either side.

    One indexed range read of ``size + 1`` rows: no count, no offset.
    """
    if cursor is not None and cursor.newer:
        after = entries.filter(created_at__gte=cursor.created_at).filter(
            Q(created_at__gt=cursor.created_at) | Q(id__gt=cursor.id)
        )
        rows = list(after.order_by("created_at", "id")[: size + 1])
        if len(rows) <= size:  # back at the top: show a full newest page, as a bare visit would
            return ledger_page(entries=entries, cursor=None, size=size)
        rows = rows[:size][::-1]
        return LedgerPage(rows=rows, newer=_at(rows[0], newer=True), older=_at(rows[-1], newer=False))
    before = entries
    if cursor is not None:
        before = entries.filter(created_at__lte=cursor.created_at).filter(
            Q(created_at__lt=cursor.created_at) | Q(id__lt=cursor.id)
        )
    rows = list(before.order_by("-created_at", "-id")[: size + 1])
    older = _at(rows[size - 1], newer=False) if len(rows) > size else None
    rows = rows[:size]
    newer = _at(rows[0], newer=True) if cursor is not None and rows else None
    return LedgerPage(rows=rows, newer=newer, older=older)


@dataclass(frozen=True)
class PageTotals:
    totals: LedgerTotals
    exact: bool  # False: only the newest ``limit`` matching rows are added up
    from_rollups: bool
    limit: int  # the most rows the capped sum reads


def ledger_page_totals(*, user: User | AnonymousUser, filters: LedgerFilters) -> PageTotals:
    """Totals of the rows ``ledger_entries(user=user, filters=filters)`` returns, as cheaply as the filters allow."""
    entries = ledger_entries(user=user, filters=filters)
    watermark = RollupWatermark.objects.order_by("pk").values_list("ingested_before", flat=True).first()
    rollups = _rollups_for(user=user, filters=filters) if watermark is not None else None
    if rollups is not None:
        rolled = LedgerTotals.from_aggregate(rollups.order_by().aggregate(**totals_aggregates(requests="requests")))
        # Rows ingested after the roll-ups last ran are in none yet: add them from the ledger, where
        # ``ingested_at`` is indexed. A row ingested while the roll-ups run may count twice until their
        # next run (a minute), as it may on the overview.
        tail = ledger_totals(entries=entries.filter(ingested_at__gte=watermark))
        return PageTotals(totals=rolled + tail, exact=True, from_rollups=True, limit=TOTALS_SCAN_LIMIT)
    # A sliced queryset aggregates over a subquery: SUM(…) FROM (SELECT … ORDER BY … LIMIT n).
    newest = entries.order_by("-created_at", "-id")[:TOTALS_SCAN_LIMIT]
    row = newest.aggregate(rows=Count("id"), **totals_aggregates(requests="request_count"))
    return PageTotals(
        totals=LedgerTotals.from_aggregate(row),
        exact=(row["rows"] or 0) < TOTALS_SCAN_LIMIT,
        from_rollups=False,
        limit=TOTALS_SCAN_LIMIT,
    )


def _hour_aligned(moment: dt.datetime | None) -> bool:
    return moment is None or (moment.minute, moment.second, moment.microsecond) == (0, 0, 0)


def _rollups_for(*, user: User | AnonymousUser, filters: LedgerFilters) -> QuerySet[Any] | None:
    """The roll-up rows whose sum is the filtered ledger's, or None when the roll-ups cannot tell it."""
    if filters.status or filters.model or not (_hour_aligned(filters.since) and _hour_aligned(filters.until)):
        return None
    by_dimension = {
        Dimension.FEATURE: filters.feature,
        Dimension.END_USER: filters.end_user,
        Dimension.ENDPOINT: filters.endpoint,
        Dimension.KEY: filters.key,
    }
    chosen = [(dimension, value) for dimension, value in by_dimension.items() if value]
    if len(chosen) > 1:  # each slice roll-up splits by one dimension only
        return None
    projects = projects_for(user=user)
    if filters.project:
        projects = projects.filter(slug=filters.project)
    project_ids = list(projects.values_list("pk", flat=True))
    # Roll-ups outlive the rows that retention drops: count only the hours from the oldest row still kept.
    oldest = (
        LedgerEntry.objects.filter(project_id__in=project_ids)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if oldest is None:
        return ProjectHourlyRollup.objects.none()
    oldest_hour = oldest.replace(minute=0, second=0, microsecond=0)
    since = oldest_hour if filters.since is None else max(filters.since, oldest_hour)
    rollups: QuerySet[Any]
    if not chosen:
        rollups = ProjectHourlyRollup.objects.all()
    elif chosen[0][0] == Dimension.KEY:
        rollups = SliceHourlyRollup.objects.filter(
            key_matches(filters.key, prefix="api_key__"), dimension=Dimension.KEY
        )
    else:
        rollups = SliceHourlyRollup.objects.filter(dimension=chosen[0][0], value=chosen[0][1])
    rollups = rollups.filter(project_id__in=project_ids, hour__gte=since)
    if filters.until is not None:
        rollups = rollups.filter(hour__lt=filters.until)
    return rollups
