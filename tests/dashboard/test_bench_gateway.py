"""`make bench` (apps/dashboard/management/commands/bench_gateway.py): what it does to the ledger before a run."""

from __future__ import annotations

import pytest

from apps.dashboard.management.commands.bench_gateway import Command
from apps.ledger.models import LedgerEntry
from tests.factories import entry_make, tenant_make


@pytest.mark.django_db(transaction=True)  # VACUUM runs outside a transaction
def test_a_run_deletes_the_bench_organisations_earlier_rows_and_no_one_elses() -> None:
    bench, other = tenant_make(name="benchorg"), tenant_make()
    for _ in range(3):
        entry_make(bench)
    kept = entry_make(other)

    note = Command()._forget_earlier_runs(bench.org.id)

    assert not LedgerEntry.objects.filter(organization=bench.org).exists()
    assert list(LedgerEntry.objects.values_list("id", flat=True)) == [kept.id]
    assert "the bench organisation's 3 from earlier runs deleted, 1 partition(s) vacuumed" in note
    # A second run finds nothing of its own to delete and vacuums nothing.
    assert "0 from earlier runs deleted, 0 partition(s) vacuumed" in Command()._forget_earlier_runs(bench.org.id)
