"""The ledger table's monthly partitions: created ahead of time, dropped when every retention has passed them.

``ledger_ledgerentry`` is range-partitioned on ``created_at`` (migration 0011): one partition per
calendar month in UTC, named ``ledger_ledgerentry_pYYYY_MM``, and a default partition that catches
any row no month partition takes (a clock far off, an import of old usage), so an insert is never
refused for its date. ``partitions_ensure`` (a periodic task) creates the coming months ahead of
time, so the default partition normally stays empty; when it does hold rows of a month being
created, they move into the new partition in the same transaction, never lost nor seen twice.

Postgres requires every unique index of a partitioned table to contain the partition key: the
primary key is ``(id, created_at)`` and the request id is unique per ``(created_at, request_id)`` (the
time first since ledger 0019: rows land at the index's end, not at a random request id's place).
A re-delivered event carries its original ``created_at``, so ingest stays idempotent.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from django.db import connection, transaction
from psycopg import sql

# Written out in the statements below too (literal SQL, no string building).
TABLE = "ledger_ledgerentry"
DEFAULT_PARTITION = f"{TABLE}_default"
_NAME = re.compile(rf"^{TABLE}_p(\d{{4}})_(\d{{2}})$")


@dataclass(frozen=True)
class Partition:
    name: str
    start: dt.datetime  # inclusive
    end: dt.datetime  # exclusive


def month_start(at: dt.datetime) -> dt.datetime:
    """The first instant (UTC) of the calendar month that holds ``at``."""
    at = at.astimezone(dt.UTC)
    return dt.datetime(at.year, at.month, 1, tzinfo=dt.UTC)


def next_month(start: dt.datetime) -> dt.datetime:
    return dt.datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=dt.UTC)


def partition_name(start: dt.datetime) -> str:
    return f"{TABLE}_p{start.year:04d}_{start.month:02d}"


def partitions_list() -> list[Partition]:
    """The month partitions that exist, oldest first (the default partition is not one of them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        names = [name for (name,) in cursor.fetchall()]
    months = []
    for name in names:
        match = _NAME.match(name)
        if match:
            start = dt.datetime(int(match[1]), int(match[2]), 1, tzinfo=dt.UTC)
            months.append(Partition(name=name, start=start, end=next_month(start)))
    return sorted(months, key=lambda p: p.start)


def partition_create(start: dt.datetime) -> bool:
    """Create the partition of the month starting at ``start``; False when it already exists.

    Rows of that month already in the default partition move into it within the same
    transaction (the default partition is locked meanwhile, so no insert slips between).
    """
    start = month_start(start)
    name = partition_name(start)
    with transaction.atomic(), connection.cursor() as cursor:
        # Creating a partition locks the whole table briefly. Behind a long reader (an export) the
        # wait would queue every insert behind it: give up instead, the next run (hourly) tries again.
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        # One creator at a time: the beat task and a migration or a second worker may race.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            return False
        bounds = [start, next_month(start)]
        cursor.execute("LOCK TABLE ledger_ledgerentry_default IN ACCESS EXCLUSIVE MODE")
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM ledger_ledgerentry_default WHERE created_at >= %s AND created_at < %s)",
            bounds,
        )
        stranded = cursor.fetchone()[0]
        if stranded:
            cursor.execute("CREATE TEMP TABLE ledger_moving (LIKE ledger_ledgerentry) ON COMMIT DROP")
            cursor.execute(
                "WITH moved AS (DELETE FROM ledger_ledgerentry_default WHERE created_at >= %s AND created_at < %s "
                "RETURNING *) INSERT INTO ledger_moving SELECT * FROM moved",
                bounds,
            )
        cursor.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF ledger_ledgerentry FOR VALUES FROM (%s) TO (%s)").format(
                sql.Identifier(name)
            ),
            bounds,
        )
        if stranded:
            cursor.execute("INSERT INTO ledger_ledgerentry SELECT * FROM ledger_moving")
    return True


def partitions_ensure(*, now: dt.datetime, ahead: int) -> list[str]:
    """Make sure this month's partition and the next ``ahead`` months' exist; returns those created."""
    created = []
    start = month_start(now)
    for _ in range(ahead + 1):
        if partition_create(start):
            created.append(partition_name(start))
        start = next_month(start)
    return created


def partition_drop(partition: Partition) -> None:
    """Drop a whole month of the ledger (every organisation's rows in it)."""
    name = sql.Identifier(partition.name)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute(sql.SQL("ALTER TABLE ledger_ledgerentry DETACH PARTITION {}").format(name))
        cursor.execute(sql.SQL("DROP TABLE {}").format(name))
