"""The /ledger/ page's filters read an index that starts with them, not every row of the projects.

A value that few or no rows have (a feature, model, end user or key without traffic, the errors of a
quiet project) used to walk the ``(project, created_at)`` index back to the first month: 27.9 s at 25M
rows. Sequential scans are off here so the planner's choice is between indexes, as on a large table.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.keys.services import key_issue
from apps.ledger.selectors import LedgerFilters, ledger_entries
from tests.factories import People, entry_make

pytestmark = pytest.mark.django_db


def _plan(people: People, filters: LedgerFilters, *, user: object = None) -> str:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("ANALYZE ledger_ledgerentry")
        entries = ledger_entries(user=user or people.owner, filters=filters)  # type: ignore[arg-type]
        return entries.order_by("-created_at", "-id")[:51].explain()


@pytest.fixture
def busy(people: People) -> People:
    """Three hundred ordinary rows of one project over a few days, none of them an error."""
    now = timezone.now()
    for n in range(300):
        entry_make(people.tenant, created_at=now - dt.timedelta(minutes=17 * n), feature="chat", end_user=f"u{n % 3}")
    return people


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        (LedgerFilters(feature="no-such-feature"), "project_id_feature_created_at"),
        (LedgerFilters(end_user="nobody"), "project_id_end_user_created_at"),
        (LedgerFilters(model="no-such-model"), "project_id_served_model"),
        (LedgerFilters(model="no-such-model"), "project_id_requested_model"),
        (LedgerFilters(status="error"), "project_id_created_at_end_user"),
        (LedgerFilters(end_user="u1", status="error"), "project_id_created_at_end_user"),
    ],
)
def test_a_filter_no_row_matches_reads_its_index(busy: People, filters: LedgerFilters, index: str) -> None:
    plan = _plan(busy, filters)
    assert index in plan, plan
    assert not ledger_entries(user=busy.owner, filters=filters).exists()


def test_a_key_without_rows_reads_the_key_index_and_another_tenants_key_of_that_name_shows_nothing(
    busy: People,
) -> None:
    quiet = key_issue(project=busy.tenant.project, name="quiet").api_key
    plan = _plan(busy, LedgerFilters(key=quiet.name))
    assert "api_key_id_created_at" in plan, plan
    # The outsider's key of the same name is busy; the owner's filter by that name still finds none of its rows.
    theirs = key_issue(project=busy.other.project, name="quiet").api_key
    entry_make(busy.other, api_key=theirs)
    assert not ledger_entries(user=busy.owner, filters=LedgerFilters(key="quiet")).exists()
    assert ledger_entries(user=busy.outsider, filters=LedgerFilters(key="quiet")).count() == 1
    assert ledger_entries(user=busy.outsider, filters=LedgerFilters(key=f"cc_live_{quiet.lookup_id}…")).count() == 0


@pytest.mark.parametrize("garbage", ["x" * 5000, "%", "' OR 1=1 --", "cc_live_", "…"])
def test_a_garbage_key_filter_matches_nothing(busy: People, garbage: str) -> None:
    assert not ledger_entries(user=busy.owner, filters=LedgerFilters(key=garbage)).exists()
