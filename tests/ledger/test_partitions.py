"""The ledger's monthly partitions and retention, driven by a simulated clock (every function takes ``now``)."""

from __future__ import annotations

import datetime as dt
import io
import re
import uuid
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from apps.audit.models import AuditEvent
from apps.budgets.models import Budget, BudgetPeriod, BudgetScope
from apps.ledger.models import BackgroundResponse, LedgerEntry, LedgerRetention
from apps.ledger.partitions import (
    DEFAULT_PARTITION,
    TABLE,
    partition_create,
    partition_drop,
    partitions_ensure,
    partitions_list,
)
from apps.ledger.retention import ledger_retention_apply
from apps.ledger.services import ledger_retention_set
from apps.tenancy.models import Organization
from tests.factories import Tenant, tenant_make

pytestmark = pytest.mark.django_db(transaction=True)


def at(year: int, month: int, day: int = 1, hour: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _partitions_as_they_were() -> Iterator[None]:
    """Partitions outlive a test's flush: drop those a test made (simulated months), remake those it dropped."""
    before = {p.name: p for p in partitions_list()}
    yield
    after = {p.name: p for p in partitions_list()}
    for name, partition in after.items():
        if name not in before:
            partition_drop(partition)
    for name, partition in before.items():
        if name not in after:
            partition_create(partition.start)


def row(tenant: Tenant, created_at: dt.datetime) -> LedgerEntry:
    return LedgerEntry.objects.create(
        request_id=f"req_{uuid.uuid4().hex}",
        created_at=created_at,
        organization=tenant.org,
        project=tenant.project,
        endpoint="chat.completions",
        requested_model="gpt-4o",
        status_code=200,
        cost="0.01",
    )


def home(entry: LedgerEntry) -> str:
    """The partition that holds ``entry``."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM ledger_ledgerentry WHERE id = %s", [entry.id])
        return cursor.fetchone()[0]


def test_the_ledger_is_partitioned_by_month_on_the_request_time() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_partkeydef(%s::regclass)", [TABLE])
        assert cursor.fetchone()[0] == "RANGE (created_at)"
    now = dt.datetime.now(dt.UTC)
    names = {p.name for p in partitions_list()}
    assert f"{TABLE}_p{now.year:04d}_{now.month:02d}" in names, "the migration made this month's partition"
    tenant = tenant_make()
    assert home(row(tenant, now)) == f"{TABLE}_p{now.year:04d}_{now.month:02d}"
    # A date no month partition takes is still stored, in the default partition.
    assert home(row(tenant, at(1999, 1, 1))) == DEFAULT_PARTITION


def test_partitions_are_created_ahead_and_only_once() -> None:
    created = partitions_ensure(now=at(2031, 11, 15, 12), ahead=3)
    assert created == [f"{TABLE}_p2031_11", f"{TABLE}_p2031_12", f"{TABLE}_p2032_01", f"{TABLE}_p2032_02"]
    assert partitions_ensure(now=at(2031, 11, 30, 23), ahead=3) == []
    # A month later the clock has moved on: one more month.
    assert partitions_ensure(now=at(2031, 12, 1), ahead=3) == [f"{TABLE}_p2032_03"]
    tenant = tenant_make()
    assert home(row(tenant, at(2032, 1, 31, 23))) == f"{TABLE}_p2032_01"
    assert home(row(tenant, at(2032, 2, 1))) == f"{TABLE}_p2032_02"


def test_rows_caught_by_the_default_partition_move_into_their_month_when_it_is_made() -> None:
    tenant = tenant_make()
    stranded = [row(tenant, at(2034, 5, day)) for day in (1, 15, 31)]
    other_month = row(tenant, at(2034, 6, 1))
    assert {home(e) for e in stranded} == {DEFAULT_PARTITION}

    assert partition_create(at(2034, 5, 20)) is True
    assert partition_create(at(2034, 5, 1)) is False
    assert {home(e) for e in stranded} == {f"{TABLE}_p2034_05"}
    assert home(other_month) == DEFAULT_PARTITION
    ids = set(LedgerEntry.objects.values_list("id", flat=True))
    assert ids == {e.id for e in [*stranded, other_month]}, "nothing lost, nothing doubled"


def test_retention_drops_a_month_once_every_organisation_is_past_it(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_RETENTION_DAYS = 60
    longer, shorter = tenant_make(), tenant_make()
    ledger_retention_set(organization=shorter.org, days=30)
    for month in range(1, 7):
        partition_create(at(2021, month))
    rows = {(t.org.id, month): row(t, at(2021, month, 10)) for t in (longer, shorter) for month in range(1, 7)}

    now = at(2021, 6, 15)
    result = ledger_retention_apply(now=now)

    # Common horizon: 60 days back = 16 April. January to March end before it: dropped whole.
    assert result.dropped == [f"{TABLE}_p2021_01", f"{TABLE}_p2021_02", f"{TABLE}_p2021_03"]
    kept = set(LedgerEntry.objects.values_list("organization_id", "created_at"))
    # April is only partly past the common horizon: kept whole for the 60-day organisation.
    assert {(longer.org.id, at(2021, m, 10)) for m in (4, 5, 6)} <= kept
    # The 30-day organisation's rows before 16 May go one by one; the other's stay.
    assert {(shorter.org.id, at(2021, m, 10)) for m in (4, 5)}.isdisjoint(kept)
    assert (shorter.org.id, at(2021, 6, 10)) in kept
    assert result.deleted == 2
    assert not LedgerEntry.objects.filter(id__in=[rows[(longer.org.id, m)].id for m in (1, 2, 3)]).exists()
    # Applying it again changes nothing.
    again = ledger_retention_apply(now=now)
    assert (again.dropped, again.deleted) == ([], 0)


def test_one_organisation_keeping_forever_keeps_the_months_and_others_lose_only_their_rows(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_RETENTION_DAYS = 0  # forever, unless an organisation says otherwise
    forever, brief = tenant_make(), tenant_make()
    ledger_retention_set(organization=brief.org, days=10)
    partition_create(at(2021, 1))
    old_forever, old_brief = row(forever, at(2021, 1, 5)), row(brief, at(2021, 1, 5))
    old_default = row(brief, at(1999, 1, 5))

    result = ledger_retention_apply(now=at(2021, 3, 1))

    assert result.dropped == []
    assert f"{TABLE}_p2021_01" in {p.name for p in partitions_list()}
    assert set(LedgerEntry.objects.values_list("id", flat=True)) == {old_forever.id}
    assert result.deleted == 2, f"{old_brief.id} and {old_default.id} went"


def test_a_background_responses_read_back_row_goes_with_its_ledger_row(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_RETENTION_DAYS = 0
    forever, brief = tenant_make(), tenant_make()
    ledger_retention_set(organization=brief.org, days=10)

    def background(tenant: Tenant, when: dt.datetime) -> BackgroundResponse:
        entry = row(tenant, when)
        return BackgroundResponse.objects.create(
            request_id=entry.request_id, ledger_created_at=when, response_id=f"resp_{entry.id}",
            organization=tenant.org, project=tenant.project, provider=tenant.provider, status="settled",
        )  # fmt: skip

    partition_create(at(2021, 1))
    kept_forever, gone = background(forever, at(2021, 1, 5)), background(brief, at(2021, 1, 5))
    recent = background(brief, at(2021, 2, 25))

    result = ledger_retention_apply(now=at(2021, 3, 1))

    assert result.background_deleted == 1
    assert set(BackgroundResponse.objects.values_list("id", flat=True)) == {kept_forever.id, recent.id}
    assert not LedgerEntry.objects.filter(request_id=gone.request_id).exists()


def test_retention_never_removes_what_a_budget_still_counts(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_RETENTION_DAYS = 5
    tenant = tenant_make()
    # A one-off budget counts everything since it starts: counter re-seeding sums it all.
    Budget.objects.create(
        organization=tenant.org,
        scope=BudgetScope.ORGANIZATION,
        name="launch",
        amount_usd=100,
        period=BudgetPeriod.ONE_OFF,
        starts_at=at(2021, 2, 1),
    )
    before_budget, counted = row(tenant, at(2021, 1, 20)), row(tenant, at(2021, 2, 3))
    ledger_retention_apply(now=at(2021, 6, 1))
    assert set(LedgerEntry.objects.values_list("id", flat=True)) == {counted.id}
    assert before_budget.id != counted.id


def test_a_monthly_budget_keeps_its_previous_period(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LEDGER_RETENTION_DAYS = 3
    tenant = tenant_make()
    Budget.objects.create(
        organization=tenant.org, scope=BudgetScope.ORGANIZATION, name="monthly", amount_usd=100, timezone="UTC"
    )
    older, previous_period = row(tenant, at(2021, 4, 28)), row(tenant, at(2021, 5, 2))
    ledger_retention_apply(now=at(2021, 6, 20))
    assert set(LedgerEntry.objects.values_list("id", flat=True)) == {previous_period.id}
    assert older.id != previous_period.id


def test_the_retention_command_sets_audits_and_refuses_garbage() -> None:
    tenant = tenant_make()
    for bad in (["--days", "0"], ["--days", "-3"]):
        with pytest.raises(CommandError):
            call_command("ledger_retention", "--org", tenant.org.slug, *bad, stdout=io.StringIO())
    with pytest.raises(CommandError, match="no organisation"):
        call_command("ledger_retention", "--org", "no-such-org", "--days", "30", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("ledger_retention", "--org", tenant.org.slug, "--days", "30", "--forever", stdout=io.StringIO())
    assert not LedgerRetention.objects.exists()

    call_command("ledger_retention", "--org", tenant.org.slug, "--days", "400", stdout=io.StringIO())
    assert LedgerRetention.objects.get(organization=tenant.org).days == 400
    call_command("ledger_retention", "--org", tenant.org.slug, "--forever", stdout=io.StringIO())
    assert LedgerRetention.objects.get(organization=tenant.org).days is None
    call_command("ledger_retention", "--org", tenant.org.slug, "--default", stdout=io.StringIO())
    assert not LedgerRetention.objects.exists()
    events = AuditEvent.objects.filter(organization=tenant.org, diff__after__has_key="ledger_retention_days").order_by(
        "id"
    )
    assert [e.diff["after"]["ledger_retention_days"] for e in events] == [400, None, "default"]
    assert all(e.actor_label.startswith("manage.py ledger_retention") for e in events)


def test_the_migration_keeps_every_row_and_can_be_undone() -> None:
    """0011 rebuilds the table: rows, ids and the id sequence survive both ways, months get their partitions."""
    from django.db.migrations.executor import MigrationExecutor

    latest = MigrationExecutor(connection).loader.graph.leaf_nodes("ledger")
    before = [("ledger", "0010_rollup_vendor")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        tenant = tenant_make()
        old = MigrationExecutor(connection).loader.project_state(before).apps.get_model("ledger", "LedgerEntry")
        stamps = [at(2019, 3, 4), at(2019, 3, 31, 23), at(2020, 7, 1), dt.datetime.now(dt.UTC)]
        for stamp in stamps:
            old.objects.create(
                request_id=f"req_{uuid.uuid4().hex}",
                created_at=stamp,
                organization_id=tenant.org.id,
                project_id=tenant.project.id,
                endpoint="chat.completions",
                requested_model="m",
                status_code=200,
                ingested_at=stamp,
            )
        kept = sorted(old.objects.values_list("id", "request_id", "created_at"))
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'ledger_ledgerentry'::regclass")
            assert cursor.fetchone()[0] == 0

        MigrationExecutor(connection).migrate(latest)
        assert sorted(LedgerEntry.objects.values_list("id", "request_id", "created_at")) == kept
        assert {f"{TABLE}_p2019_03", f"{TABLE}_p2020_07"} <= {p.name for p in partitions_list()}
        assert home(LedgerEntry.objects.get(created_at=at(2019, 3, 31, 23))) == f"{TABLE}_p2019_03"
        assert row(tenant, at(2020, 7, 2)).id > max(i for i, _r, _c in kept), "the id sequence carried on"

        MigrationExecutor(connection).migrate(before)
        assert len(old.objects.all()) == len(kept) + 1
    finally:
        MigrationExecutor(connection).migrate(latest)
        for partition in partitions_list():
            if partition.start.year in (2019, 2020):
                partition_drop(partition)


def test_the_bench_bulk_load_builds_partitions_the_ledger_would_have_made() -> None:
    """``bench_ledger --bulk`` (the 100M-row measurement) makes each month's partition by hand, then attaches it:
    every row in its month, every index of the ledger on each month, ids from the ledger's own sequence; its
    clean-up leaves the months empty and partitioned as before."""
    out = io.StringIO()
    call_command("bench_ledger", rows=13_000, bulk=True, keep=True, runs=1, no_plans=True, stdout=out)
    tag = re.search(r"kept: --reuse (\S+)", out.getvalue())[1]  # type: ignore[index]
    org_id = Organization.objects.get(slug=tag).pk
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text, count(*), count(DISTINCT id), min(created_at), max(created_at) "
            "FROM ledger_ledgerentry WHERE organization_id = %s GROUP BY 1",
            [org_id],
        )
        months = {name: (rows, ids, first, last) for name, rows, ids, first, last in cursor.fetchall()}
        cursor.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass",
            [TABLE],
        )
        (ledger_indexes,) = cursor.fetchone()
        for name in months:
            # Each index of the month is attached to the ledger's index of the same definition.
            cursor.execute(
                "SELECT count(*) FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid "
                "WHERE x.indrelid = %s::regclass",
                [name],
            )
            assert cursor.fetchone()[0] == ledger_indexes, name
            cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'", [name])
            assert "bench_month" not in {conname for (conname,) in cursor.fetchall()}, "the load's CHECK is dropped"
    assert sum(rows for rows, *_ in months.values()) == 13_000
    assert sum(ids for _rows, ids, *_ in months.values()) == 13_000
    assert len(months) == 13 and DEFAULT_PARTITION not in months
    for name, (_rows, _ids, first, last) in months.items():
        assert name == f"{TABLE}_p{first.year:04d}_{first.month:02d}" == f"{TABLE}_p{last.year:04d}_{last.month:02d}"
    newest = LedgerEntry.objects.filter(organization_id=org_id).order_by("-id").first()
    assert newest is not None
    assert row(tenant_make(), dt.datetime.now(dt.UTC)).id > newest.id, "the ledger's own sequence gave the ids"

    call_command("bench_ledger", reuse=tag, bulk=True, runs=1, no_plans=True, stdout=io.StringIO())
    assert not LedgerEntry.objects.filter(organization_id=org_id).exists()
    assert set(months) <= {p.name for p in partitions_list()}, "the months are partitions again, empty"


def test_the_bench_bulk_load_refuses_a_month_that_holds_rows() -> None:
    row(tenant_make(), dt.datetime.now(dt.UTC))
    with pytest.raises(CommandError, match="needs empty months"):
        call_command("bench_ledger", rows=1_000, bulk=True, runs=1, no_plans=True, stdout=io.StringIO())
    assert LedgerEntry.objects.count() == 1, "nothing was loaded"
    assert not Organization.objects.filter(slug__startswith="bench-ledger-").exists()
