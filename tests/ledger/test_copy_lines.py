"""The ingest's COPY text holds the row the ORM would store, whatever the event carries.

The consumer writes each event as one line of COPY text (``_copy_line``); ``_row_from_event`` is the
same row as Python values (what ``_entry_from_event`` gives the ORM). Postgres reads the lines here,
and each row it read must equal the Python one, value by value.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from apps.ledger.services import (
    _STAGING_COPY,
    _STAGING_CREATE,
    INGEST_COLUMNS,
    _copy_line,
    _created_at_text,
    _event_clean,
    _row_from_event,
)

# Text that COPY treats specially (its escape, delimiter, line end, NULL marker) and text cleaning removes.
_AWKWARD = st.sampled_from(["\\", "\\N", "\\.", "\t", "\n", "\r", "\x00", "\x1b", "\x85", '"', "'", "é", "☃", "𝄞"])
_TEXT = st.lists(st.text(max_size=5) | _AWKWARD, max_size=8).map("".join)
_VALUE = st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
_DECISION = (
    st.none()
    | _VALUE
    | st.dictionaries(
        st.sampled_from(["kind", "model", "reason", "rule_id", "retries", "unpriced", "tried", "would_block", "x"]),
        _VALUE | st.lists(st.dictionaries(st.sampled_from(["model", "provider", "outcome"]), _VALUE), max_size=2),
    )
)
_EVENT = st.fixed_dictionaries(
    {
        "request_id": _TEXT.filter(bool),
        "created_at": st.floats(min_value=0, max_value=253_402_300_799) | st.integers(0, 2**40) | _VALUE,
        "organization_id": st.integers(1, 2**63 - 1),
        "project_id": st.integers(1, 2**63 - 1),
        "decision": _DECISION,
    },
    optional={
        name: _VALUE
        for name in INGEST_COLUMNS
        if name not in {"request_id", "created_at", "organization_id", "project_id", "decision", "source"}
    }
    | {"cost": _VALUE | st.decimals(min_value=0, max_value=10**12).map(str)},
)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_EVENT, min_size=1, max_size=12))
def test_postgres_reads_from_each_line_the_row_the_orm_would_store(events: list[dict[str, Any]]) -> None:
    ingested_at = "2026-12-02T10:00:00.123456+00:00"
    lines, rows = [], []
    for event in events:
        try:
            line = _copy_line(_event_clean(orjson.loads(orjson.dumps(event))), ingested_at)
        except (ValueError, TypeError, KeyError):
            with pytest.raises((ValueError, TypeError, KeyError)):
                _row_from_event(orjson.loads(orjson.dumps(event)))
            continue
        lines.append(line)
        rows.append(_row_from_event(orjson.loads(orjson.dumps(event))))
    with connection.cursor() as cursor:
        # The fallback's staging table: the ledger's columns, none of its constraints.
        cursor.execute("DROP TABLE IF EXISTS pg_temp.ledger_ingest_staging")
        cursor.execute(_STAGING_CREATE)
        with cursor.cursor.copy(_STAGING_COPY) as copy:
            for line in lines:
                copy.write(line)
        cursor.execute(
            sql.SQL("SELECT {}, ingested_at FROM ledger_ingest_staging").format(
                sql.SQL(", ").join(map(sql.Identifier, INGEST_COLUMNS))
            )
        )
        stored = cursor.fetchall()
        cursor.execute("DROP TABLE pg_temp.ledger_ingest_staging")
    assert len(stored) == len(rows)
    decision = INGEST_COLUMNS.index("decision")
    for got, expected in zip(stored, rows, strict=True):
        # The decision as JSON values (Django reads jsonb as text and parses it in the field).
        got, expected = list(got), list(expected)
        for row in (got, expected):
            row[decision] = None if row[decision] is None else orjson.loads(row[decision])
        assert got[:-1] == expected
        assert got[-1] == dt.datetime.fromisoformat(ingested_at)


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(min_value=0, max_value=253_402_300_800, allow_nan=False)
    | st.integers(0, 253_402_300_799).map(lambda n: n + st_fraction(n))
)
def test_created_at_is_written_as_datetime_reads_the_stamp(stamp: float) -> None:
    try:
        expected = dt.datetime.fromtimestamp(stamp, dt.UTC)
    except ValueError:
        with pytest.raises(ValueError):
            _created_at_text(stamp)
        return
    assert dt.datetime.fromisoformat(_created_at_text(stamp)) == expected


def st_fraction(n: int) -> float:
    """Halves and near-halves of a microsecond, where rounding could go either way."""
    return [0.0, 0.5e-6, 1.5e-6, 0.9999995, 0.9999994999, math.ulp(float(n))][n % 6]
