"""Importing OpenAI usage exports: validated whole, written whole, idempotent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.db.models import Sum
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.ledger.models import HourlyRollup, LedgerEntry, ProjectHourlyRollup, Source
from apps.reports.services import ImportRejected, usage_import
from tests.factories import People, entry_make, login
from tests.reports.helpers import at

pytestmark = pytest.mark.django_db

USAGE_CSV = (
    "start_time,end_time,project_id,model,input_tokens,input_cached_tokens,output_tokens,num_model_requests,batch\n"
    "1756684800,1756771200,proj_abc,gpt-4o-mini-2024-07-18,1000000,200000,100000,40,false\n"
    "1756771200,1756857600,proj_abc,gpt-4.1,2000000,0,500000,12,\n"
    "2025-09-03T00:00:00Z,2025-09-04T00:00:00Z,proj_abc,gpt-4o-mini,1000000,0,0,3,true\n"
)


def _post(client: Client, people: People, content: str, name: str = "usage.csv") -> object:
    return client.post(
        reverse("reports:import"),
        {
            "organization": people.tenant.org.pk,
            "project": people.tenant.project.pk,
            "file": SimpleUploadedFile(name, content.encode(), content_type="text/csv"),
        },
    )


def test_clean_usage_import_creates_imported_rows_and_rollups(client: Client, people: People) -> None:
    entry_make(people.tenant, created_at=at(1, 10), cost=Decimal("0.5"))  # gateway spend in the same hour
    login(client, people.owner)

    response = _post(client, people, USAGE_CSV)

    assert response.status_code == 302  # type: ignore[attr-defined]
    assert response["Location"].endswith(f"?org={people.tenant.org.slug}&month=2025-09")  # type: ignore[index]
    imported = list(LedgerEntry.objects.filter(source=Source.IMPORTED).order_by("created_at"))
    assert len(imported) == 3
    first, second, batch = imported
    assert first.created_at == dt.datetime(2025, 9, 1, tzinfo=dt.UTC) and first.project == people.tenant.project
    assert (first.prompt_tokens, first.cached_tokens, first.completion_tokens) == (1_000_000, 200_000, 100_000)
    # Priced from the catalogue (the dated snapshot name maps to gpt-4o-mini): 0.8M × 0.15 + 0.2M × 0.075 + 0.1M × 0.6
    assert first.cost == Decimal("0.195") == first.counterfactual_cost
    assert second.cost == Decimal("2") * 2 + Decimal("0.5") * 8
    assert batch.cost == Decimal("0.075")  # batch input price
    assert "40 requests" in first.route and "OpenAI project proj_abc" in first.route
    # Rolled up beside gateway rows: the roll-up of 2025-09-01 00:00 holds the imported row.
    rollup = HourlyRollup.objects.get(hour=dt.datetime(2025, 9, 1, tzinfo=dt.UTC))
    assert rollup.cost == Decimal("0.195") and rollup.prompt_tokens == 1_000_000
    report = client.get(response["Location"]).content.decode()  # type: ignore[index]
    assert "Imported 3 row(s)" in report and "$8.27" in report  # 0.195 + 8 + 0.075 imported


def test_reimporting_the_same_file_is_idempotent(client: Client, people: People) -> None:
    login(client, people.owner)
    _post(client, people, USAGE_CSV)
    before = (LedgerEntry.objects.count(), sum(e.cost for e in LedgerEntry.objects.all()))

    response = _post(client, people, USAGE_CSV, name="same-file-again.csv")

    assert response.status_code == 302  # type: ignore[attr-defined]
    assert (LedgerEntry.objects.count(), sum(e.cost for e in LedgerEntry.objects.all())) == before
    report = client.get(response["Location"]).content.decode()  # type: ignore[index]
    assert "Imported 0 row(s)" in report and "3 replaced the rows of an earlier import" in report
    assert HourlyRollup.objects.filter(hour=dt.datetime(2025, 9, 1, tzinfo=dt.UTC)).count() == 1


def _imported_cost_by_day(people: People) -> dict[dt.date, Decimal]:
    totals: dict[dt.date, Decimal] = {}
    for entry in LedgerEntry.objects.filter(organization=people.tenant.org, source=Source.IMPORTED):
        day = entry.created_at.date()
        totals[day] = totals.get(day, Decimal(0)) + entry.cost
    return totals


def test_overlapping_exports_replace_the_shared_buckets_instead_of_adding_them(people: People) -> None:
    header = "start_time,end_time,project_id,model,input_tokens,output_tokens,num_model_requests,amount.value\n"
    first_half = header + (
        "2025-09-01T00:00:00Z,2025-09-02T00:00:00Z,proj_abc,gpt-4o-mini,1000,100,4,1.00\n"
        "2025-09-02T00:00:00Z,2025-09-03T00:00:00Z,proj_abc,gpt-4o-mini,500,50,2,0.50\n"  # Sep 2 still filling
        "2025-09-02T00:00:00Z,2025-09-03T00:00:00Z,proj_xyz,gpt-4o-mini,700,70,3,0.70\n"
    )
    # A later export: Sep 2 complete, Sep 3 new; rows in another order, times as Unix seconds.
    second_half = header + (
        "1756857600,1756944000,proj_abc,gpt-4o-mini,3000,300,9,3.00\n"  # Sep 3
        "1756771200,1756857600,proj_abc,gpt-4o-mini,2000,200,8,2.00\n"  # Sep 2, final
        "1756771200,1756857600,proj_xyz,gpt-4o-mini,700,70,3,0.70\n"
    )
    org, project = people.tenant.org, people.tenant.project
    first = usage_import(organization=org, project=project, content=first_half.encode(), file_name="aug-sep.csv")
    assert (first.created, first.replaced) == (3, 0)

    second = usage_import(organization=org, project=project, content=second_half.encode(), file_name="sep.csv")

    assert (second.created, second.replaced) == (1, 2)
    assert _imported_cost_by_day(people) == {
        dt.date(2025, 9, 1): Decimal("1.00"),
        dt.date(2025, 9, 2): Decimal("2.70"),  # 2.00 (final, replacing 0.50) + 0.70 (unchanged)
        dt.date(2025, 9, 3): Decimal("3.00"),
    }
    sep_2 = LedgerEntry.objects.get(created_at=dt.datetime(2025, 9, 2, tzinfo=dt.UTC), route__contains="proj_abc")
    assert (sep_2.prompt_tokens, sep_2.completion_tokens) == (2000, 200) and "sep.csv" in sep_2.route
    # The roll-ups followed the replaced rows: the hour of Sep 2 holds the final figures only.
    assert ProjectHourlyRollup.objects.get(hour=dt.datetime(2025, 9, 2, tzinfo=dt.UTC)).cost == Decimal("2.70")
    assert HourlyRollup.objects.aggregate(s=Sum("cost"))["s"] == Decimal("6.70")

    # One file holding the same bucket twice cannot say which figure is right: those lines are refused.
    both = first_half + second_half[len(header) :]
    with pytest.raises(ImportRejected) as rejected:
        usage_import(organization=org, project=project, content=both.encode())
    assert [(p.line, p.message) for p in rejected.value.errors] == [
        (6, "the same bucket and columns as line 3"),
        (7, "the same bucket and columns as line 4"),
    ]
    assert sum(_imported_cost_by_day(people).values()) == Decimal("6.70")


def test_the_same_export_imported_by_two_organisations_counts_once_in_each(people: People) -> None:
    for tenant in (people.tenant, people.other):
        result = usage_import(organization=tenant.org, project=tenant.project, content=USAGE_CSV.encode())
        assert (result.created, result.replaced) == (3, 0)
    for tenant in (people.tenant, people.other):
        rows = LedgerEntry.objects.filter(organization=tenant.org, source=Source.IMPORTED)
        assert rows.count() == 3 and rows.aggregate(s=Sum("cost"))["s"] == Decimal("8.27")


def test_reimporting_into_another_project_moves_the_buckets(people: People) -> None:
    from apps.tenancy.services import project_create

    org, first = people.tenant.org, people.tenant.project
    second = project_create(organization=org, name="Imported spend", slug="imported-spend")
    usage_import(organization=org, project=first, content=USAGE_CSV.encode())
    result = usage_import(organization=org, project=second, content=USAGE_CSV.encode())
    assert (result.created, result.replaced) == (0, 3)
    assert set(LedgerEntry.objects.filter(source=Source.IMPORTED).values_list("project", flat=True)) == {second.pk}
    by_project = dict(ProjectHourlyRollup.objects.values_list("project").annotate(s=Sum("cost")))
    assert by_project == {second.pk: Decimal("8.27")}


def test_malformed_file_reports_every_bad_line_and_writes_nothing(client: Client, people: People) -> None:
    bad = (
        "start_time,model,input_tokens,output_tokens,input_cached_tokens,amount.value\n"
        "1756684800,gpt-4o-mini,100,10,0,\n"  # line 2: fine
        "yesterday,gpt-4o-mini,100,10,0,\n"  # line 3: time
        "1756684800,gpt-4o-mini,-5,10,0,\n"  # line 4: negative
        "\n"  # line 5: blank, skipped
        '1756684800,"gpt-4o-mini",100,ten,0,\n'  # line 6: not a number
        "1756684800,gpt-4o-mini,100,10,500,\n"  # line 7: cached > input
        "1756684800,mystery-model,100,10,0,\n"  # line 8: no price, no cost
        "1756684800,mystery-model,100,10,0,0.25\n"  # line 9: fine: cost given
        "1756684800,gpt-4o-mini,100\n"  # line 10: short row
    )
    login(client, people.owner)

    response = _post(client, people, bad)

    assert response.status_code == 400  # type: ignore[attr-defined]
    problems = response.context["problems"]  # type: ignore[attr-defined]
    assert [p.line for p in problems] == [3, 4, 6, 7, 8, 10]
    messages = {p.line: p.message for p in problems}
    assert "yesterday" in messages[3] and "negative" in messages[4] and "ten" in messages[6]
    assert "larger than input_tokens" in messages[7] and "mystery-model" in messages[8] and "columns" in messages[10]
    assert "Line 3:" in response.content.decode() and "Nothing was imported" in response.content.decode()  # type: ignore[attr-defined]
    assert not LedgerEntry.objects.exists() and not HourlyRollup.objects.exists()


def test_unrecognised_header_is_refused(people: People) -> None:
    with pytest.raises(ImportRejected) as rejected:
        usage_import(organization=people.tenant.org, project=people.tenant.project, content=b"when,what\n1,2\n")
    assert rejected.value.errors[0].line == 1 and "Unrecognised header" in rejected.value.errors[0].message
    with pytest.raises(ImportRejected) as rejected:
        usage_import(organization=people.tenant.org, project=people.tenant.project, content=b"\xff\xfe\x00junk")
    assert "UTF-8" in rejected.value.errors[0].message
    assert not LedgerEntry.objects.exists()


def test_costs_export_imports_amounts(people: People) -> None:
    content = (
        "\ufeffstart_time,end_time,amount.value,amount.currency,line_item,project_id\n"
        '1756684800,1756771200,1.25,usd,"gpt-4o-2024-08-06, input",proj_abc\n'
        "1756684800,1756771200,0.5,usd,,proj_abc\n"
    ).encode()
    result = usage_import(organization=people.tenant.org, project=people.tenant.project, content=content)
    assert result.format == "costs" and result.created == 2 and result.cost == Decimal("1.75")
    models = sorted(LedgerEntry.objects.values_list("served_model", flat=True))
    assert models == ["gpt-4o-2024-08-06", "unattributed"]
    eur = content.replace(b",usd,", b",eur,")
    with pytest.raises(ImportRejected) as rejected:
        usage_import(organization=people.tenant.org, project=people.tenant.project, content=eur)
    assert [p.line for p in rejected.value.errors] == [2, 3]


def test_import_permissions(client: Client, people: People) -> None:
    # Developers may not import: 403 on the page and on a post.
    login(client, people.member)
    assert client.get(reverse("reports:import")).status_code == 403
    assert _post(client, people, USAGE_CSV).status_code == 403  # type: ignore[attr-defined]
    # An outsider cannot name another organisation: 404.
    client.logout()
    login(client, people.outsider)
    assert client.get(reverse("reports:import")).status_code == 200  # they own their own organisation
    assert _post(client, people, USAGE_CSV).status_code == 404  # type: ignore[attr-defined]
    # Finance reads and exports but writes nothing, and an import writes: 403 too.
    client.logout()
    login(client, people.finance)
    assert client.get(reverse("reports:import")).status_code == 403
    assert _post(client, people, USAGE_CSV).status_code == 403  # type: ignore[attr-defined]
    # The owner may: and only into projects of the chosen organisation.
    client.logout()
    login(client, people.owner)
    assert client.get(reverse("reports:import")).status_code == 200
    wrong = client.post(
        reverse("reports:import"),
        {
            "organization": people.tenant.org.pk,
            "project": people.other.project.pk,
            "file": SimpleUploadedFile("u.csv", USAGE_CSV.encode()),
        },
    )
    assert wrong.status_code == 400
    assert not LedgerEntry.objects.exists()


def test_a_reimport_finds_its_stored_rows_through_an_index_on_the_time(people: People) -> None:
    """The ledger's unique key starts with the time (ledger 0019), no index with the request id: the import
    looks its rows up by time too, and reads an index on it rather than every row (sequential scans off,
    as on a large table; the key or the time index, as the statistics say)."""
    org, project = people.tenant.org, people.tenant.project
    usage_import(organization=org, project=project, content=USAGE_CSV.encode(), file_name="usage.csv")
    with CaptureQueriesContext(connection) as queries:
        again = usage_import(organization=org, project=project, content=USAGE_CSV.encode(), file_name="usage.csv")
    assert (again.created, again.replaced) == (0, 3)
    (lookup,) = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith('SELECT "ledger_ledgerentry"."created_at"')
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("ANALYZE ledger_ledgerentry")
        cursor.execute(f"EXPLAIN {lookup}")  # noqa: S608 -- the import's own query, as Django ran it
        plan = "\n".join(line for (line,) in cursor.fetchall())
    assert "Index Cond: (created_at = ANY" in plan and "Seq Scan" not in plan, plan
