"""Ledger retention: how long each organisation's rows are kept, applied by dropping whole month partitions.

Every organisation keeps its rows ``LEDGER_RETENTION_DAYS`` days (0: forever) unless its
``LedgerRetention`` says otherwise. Partitions hold every organisation's rows, so a month is dropped
only once the retention of every organisation has passed its end (the *common horizon*). An
organisation whose retention is shorter has its older rows deleted row by row, batch by batch,
within the partitions that remain (the index on organisation and time keeps that cheap); so do rows
older than the common horizon in the default partition. A month only partly past the common
horizon is kept whole until its end passes it: the common retention is honoured to the month.

Retention never removes a row that something still counts: receivers of ``retention_floor`` (the
budgets app) return, per organisation, the earliest instant still read (a budget's current and
previous period: counter re-seeding and the period history read the ledger back from there).

A background response's read-back row (``BackgroundResponse``) goes with its ledger row: once the
organisation's horizon passes the row's time, there is no ledger row left for it to settle or explain.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import cast

from django.conf import settings
from django.db import connection
from django.dispatch import Signal

from apps.ledger.models import BackgroundResponse, LedgerRetention
from apps.ledger.partitions import partition_drop, partitions_list
from apps.tenancy.models import Organization

# Sent with ``now``; each receiver returns ``{organization_id: earliest instant of its rows still read}``.
retention_floor = Signal()

DELETE_BATCH = 10_000


@dataclass
class RetentionResult:
    dropped: list[str] = field(default_factory=list)  # partitions dropped
    deleted: int = 0  # rows deleted one by one
    background_deleted: int = 0  # read-back rows of background responses whose ledger rows went


def _floors(now: dt.datetime) -> dict[int, dt.datetime]:
    floors: dict[int, dt.datetime] = {}
    # django-stubs types a receiver's answer as str; ours are dicts.
    answers = [cast(dict[int, dt.datetime], answer) for _r, answer in retention_floor.send(sender=None, now=now)]
    for answer in answers:
        for org_id, since in answer.items():
            floors[org_id] = min(since, floors.get(org_id, since))
    return floors


def retention_horizons(*, now: dt.datetime) -> tuple[dict[int, dt.datetime | None], dt.datetime | None]:
    """Per organisation, the instant before which its rows go (None: kept forever); and the common horizon.

    The common horizon is the earliest of them all (None when any organisation keeps its rows
    forever): months that end before it hold no row anyone keeps.
    """
    default = settings.LEDGER_RETENTION_DAYS or None
    chosen = dict(LedgerRetention.objects.values_list("organization_id", "days"))
    floors = _floors(now)
    horizons: dict[int, dt.datetime | None] = {}
    for org_id in Organization.objects.values_list("id", flat=True):
        days = chosen.get(org_id, default)
        horizon = None if days is None else now - dt.timedelta(days=days)
        if horizon is not None and org_id in floors:
            horizon = min(horizon, floors[org_id])
        horizons[org_id] = horizon
    # Rows of organisations deleted since follow the deployment's default.
    orphans = None if default is None else now - dt.timedelta(days=default)
    everyone = [*horizons.values(), orphans]
    common = None if any(h is None for h in everyone) else min(h for h in everyone if h is not None)
    return horizons, common


# Rows before a horizon in the default partition; an organisation's rows before its horizon.
_DELETE_OLD_DEFAULT = (
    "DELETE FROM ledger_ledgerentry_default WHERE ctid IN "
    "(SELECT ctid FROM ledger_ledgerentry_default WHERE created_at < %s LIMIT %s)"
)
_DELETE_ORG = (
    "DELETE FROM ledger_ledgerentry WHERE (id, created_at) IN (SELECT id, created_at FROM ledger_ledgerentry "
    "WHERE organization_id = %s AND created_at < %s LIMIT %s)"
)


def _delete(statement: str, params: list[int | dt.datetime]) -> int:
    """Run a batched delete until it deletes less than a batch (short transactions, no long lock)."""
    total = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(statement, [*params, DELETE_BATCH])
            total += cursor.rowcount
            if cursor.rowcount < DELETE_BATCH:
                return total


def ledger_retention_apply(*, now: dt.datetime) -> RetentionResult:
    """Drop the months every retention has passed, then delete the older rows that remain. Idempotent."""
    horizons, common = retention_horizons(now=now)
    result = RetentionResult()
    if common is not None:
        for partition in partitions_list():
            if partition.end <= common:
                partition_drop(partition)
                result.dropped.append(partition.name)
        # A month only partly past the horizon waits for its end; the default partition has no end.
        result.deleted += _delete(_DELETE_OLD_DEFAULT, [common])
    for org_id, horizon in horizons.items():
        if horizon is not None and (common is None or horizon > common):
            result.deleted += _delete(_DELETE_ORG, [org_id, horizon])
    gone = BackgroundResponse.objects.none()
    if common is not None:  # every organisation's, and those of organisations deleted since
        gone = BackgroundResponse.objects.filter(ledger_created_at__lt=common)
    for org_id, horizon in horizons.items():
        if horizon is not None and (common is None or horizon > common):
            gone = gone | BackgroundResponse.objects.filter(organization_id=org_id, ledger_created_at__lt=horizon)
    result.background_deleted = gone.delete()[0]
    return result
