"""Range-partition the ledger by month on ``created_at``, keeping every row (see apps/ledger/partitions.py).

The table is rebuilt: the old one is renamed, a partitioned table with the same columns, defaults,
identity and checks takes its name, months that hold rows (and this month and the next three) get
partitions, a default partition catches the rest, the rows are copied over and the old table is
dropped. The indexes are then re-created under their old names; the primary key and the unique
constraints gain ``created_at``, as Postgres requires of a partitioned table's unique indexes.
Django's model state does not change (``id`` stays the primary key, ``request_id`` stays unique),
so later migrations that add columns or indexes work on the partitioned table as they did before.

The rebuild copies the whole table under an exclusive lock: on a large ledger, run it in a quiet hour.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import migrations

TABLE = "ledger_ledgerentry"
OLD = f"{TABLE}_unpartitioned"
MONTHS_AHEAD = 3


def _month(year: int, month: int) -> dt.datetime:
    return dt.datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=dt.UTC)


def _shape(cursor: Any) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """The table's plain index definitions, and its primary key and unique constraints (name, kind, columns)."""
    cursor.execute(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = %s::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        [TABLE],
    )
    indexes = [definition for (definition,) in cursor.fetchall()]
    cursor.execute(
        "SELECT c.conname, c.contype, array_agg(a.attname ORDER BY k.ord) FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u') GROUP BY c.conname, c.contype",
        [TABLE],
    )
    return indexes, list(cursor.fetchall())


def _rebuild(schema_editor: Any, *, partitioned: bool) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        indexes, keys = _shape(cursor)
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
        (sequence,) = cursor.fetchone()
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
        like = f"LIKE {OLD} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING STORAGE"
        if partitioned:
            cursor.execute(f"CREATE TABLE {TABLE} ({like}) PARTITION BY RANGE (created_at)")
            cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
            now = dt.datetime.now(dt.UTC)
            cursor.execute(
                f"SELECT DISTINCT extract(year FROM created_at AT TIME ZONE 'UTC')::int, "
                f"extract(month FROM created_at AT TIME ZONE 'UTC')::int FROM {OLD}"
            )
            months = {_month(year, month) for year, month in cursor.fetchall()}
            months |= {_month(now.year, now.month + i) for i in range(MONTHS_AHEAD + 1)}
            for start in sorted(months):
                end = _month(start.year, start.month + 1)
                cursor.execute(
                    f"CREATE TABLE {TABLE}_p{start.year:04d}_{start.month:02d} PARTITION OF {TABLE} "
                    "FOR VALUES FROM (%s) TO (%s)",
                    [start, end],
                )
        else:
            cursor.execute(f"CREATE TABLE {TABLE} ({like})")
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")
        cursor.execute(f"DROP TABLE {OLD}")
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
        (new_sequence,) = cursor.fetchone()
        cursor.execute(f"SELECT setval(%s, coalesce((SELECT max(id) FROM {TABLE}), 0) + 1, false)", [new_sequence])
        if new_sequence != sequence:
            cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {sequence.split('.')[-1]}")
        for definition in indexes:
            # A partitioned table's index reads "ON ONLY <table>"; on a plain table that is just "ON".
            cursor.execute(definition.replace(" ON ONLY ", " ON "))
        for name, kind, columns in keys:
            columns = [c for c in columns if c != "created_at"] + (["created_at"] if partitioned else [])
            constraint = "PRIMARY KEY" if kind == "p" else "UNIQUE"
            cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {constraint} ({', '.join(columns)})")


def partition(apps: Any, schema_editor: Any) -> None:
    _rebuild(schema_editor, partitioned=True)


def unpartition(apps: Any, schema_editor: Any) -> None:
    _rebuild(schema_editor, partitioned=False)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0010_rollup_vendor")]

    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
