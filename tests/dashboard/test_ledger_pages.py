"""The ledger page and API at scale: keyset pages by cursor, a default week, totals from the roll-ups."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import signing
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.ledger import browse
from apps.ledger.browse import CURSOR_SALT, LedgerCursor
from apps.ledger.models import LedgerEntry
from apps.ledger.selectors import LedgerFilters, ledger_entries, ledger_totals
from apps.ledger.services import rollups_refresh
from tests.factories import People, entry_make, login

pytestmark = pytest.mark.django_db

GARBAGE_CURSORS = [
    "x",
    "W10:1abc:deadbeef",  # the shape of a signed value, with a forged signature
    signing.dumps(["2026-01-01T00:00:00", 1, 0], salt=CURSOR_SALT),  # naive time
    signing.dumps(["2026-01-01T00:00:00+00:00", "1", 0], salt=CURSOR_SALT),  # id not a number
    signing.dumps(["not a date", 1, 0], salt=CURSOR_SALT),
    signing.dumps({"created_at": 1}, salt=CURSOR_SALT),
    signing.dumps(["2026-01-01T00:00:00+00:00", 1, 0], salt="another-salt"),
    "\x00" * 10,
    "é" * 2000,
]


def _rows_in_pages(client: Client, params: dict[str, str]) -> list[list[str]]:
    pages, cursor = [], ""
    while True:
        response = client.get(reverse("dashboard:ledger"), {**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200
        page = response.context["page"]
        pages.append([entry.request_id for entry in page.rows])
        if page.older is None:
            return pages
        cursor = page.older.token()


def test_cursor_pages_walk_every_row_once_newest_first_even_on_equal_times(client: Client, people: People) -> None:
    now = timezone.now().replace(microsecond=0)
    # Many rows share a created_at: the id breaks the tie, so no row is skipped or repeated at a page edge.
    for n in range(120):
        entry_make(people.tenant, request_id=f"r{n:03}", created_at=now - dt.timedelta(seconds=n // 7))
    login(client, people.owner)
    pages = _rows_in_pages(client, {})
    assert [len(page) for page in pages] == [50, 50, 20]
    flat = [request_id for page in pages for request_id in page]
    expected = list(LedgerEntry.objects.order_by("-created_at", "-id").values_list("request_id", flat=True))
    assert flat == expected and len(set(flat)) == 120
    # And back: "newer" from the last page gives the middle page again, then the newest one.
    last = client.get(reverse("dashboard:ledger"), {"cursor": _older_cursor(client, pages=2)})
    middle = client.get(reverse("dashboard:ledger"), {"cursor": last.context["page"].newer.token()})
    assert [e.request_id for e in middle.context["page"].rows] == pages[1]
    newest = client.get(reverse("dashboard:ledger"), {"cursor": middle.context["page"].newer.token()})
    assert [e.request_id for e in newest.context["page"].rows] == pages[0]
    assert newest.context["page"].newer is None


def _older_cursor(client: Client, *, pages: int) -> str:
    cursor = ""
    for _ in range(pages):
        response = client.get(reverse("dashboard:ledger"), {"cursor": cursor} if cursor else {})
        cursor = response.context["page"].older.token()
    return cursor


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS)
def test_a_garbage_cursor_is_a_400_with_a_note_on_the_page_and_in_the_api(
    client: Client, people: People, cursor: str
) -> None:
    entry_make(people.tenant, feature="visible-feature")
    entry_make(people.other, feature="foreign-feature")
    login(client, people.owner)
    response = client.get(reverse("dashboard:ledger"), {"cursor": cursor})
    assert response.status_code == 400
    html = response.content.decode()
    assert "That page link is not valid" in html  # and the newest page, still scoped:
    assert "visible-feature" in html and "foreign-feature" not in html
    api = APIClient()
    api.force_authenticate(people.owner)
    answer = api.get("/api/ledger/", {"cursor": cursor})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "validation_error"


@pytest.mark.parametrize("limit", ["0", "-1", "501", "1e3", "ten", " 5"])
def test_api_rejects_a_limit_outside_its_range(people: People, limit: str) -> None:
    api = APIClient()
    api.force_authenticate(people.owner)
    response = api.get("/api/ledger/", {"limit": limit})
    assert response.status_code == 400 and response.json()["error"]["type"] == "validation_error"


def test_a_cursor_never_shows_another_tenants_rows(client: Client, people: People) -> None:
    now = timezone.now()
    for n in range(60):
        entry_make(people.tenant, request_id=f"mine-{n}", created_at=now - dt.timedelta(seconds=n))
    entry_make(people.other, request_id="outsiders-own", created_at=now - dt.timedelta(hours=1))
    login(client, people.owner)
    cursor = client.get(reverse("dashboard:ledger")).context["page"].older.token()
    # The outsider replays the owner's cursor, in both directions: the position is honoured, the scope too.
    login(client, people.outsider)
    older = client.get(reverse("dashboard:ledger"), {"cursor": cursor})
    assert [e.request_id for e in older.context["page"].rows] == ["outsiders-own"]
    token = LedgerCursor(created_at=now - dt.timedelta(days=1), id=1, newer=True).token()
    newer = client.get(reverse("dashboard:ledger"), {"cursor": token})
    assert [e.request_id for e in newer.context["page"].rows] == ["outsiders-own"]
    assert newer.context["totals"].totals.requests == 1
    api = APIClient()
    api.force_authenticate(people.outsider)
    body = api.get("/api/ledger/", {"cursor": cursor}).json()
    assert [row["request_id"] for row in body["results"]] == ["outsiders-own"]


def test_api_walks_the_ledger_by_next_links(people: People) -> None:
    now = timezone.now()
    for n in range(25):
        entry_make(people.tenant, request_id=f"r{n:02}", created_at=now - dt.timedelta(seconds=n))
    api = APIClient()
    api.force_authenticate(people.owner)
    seen, url, params = [], "/api/ledger/", {"limit": "10", "feature": ""}
    while url:
        body = api.get(url, params).json()
        seen += [row["request_id"] for row in body["results"]]
        url, params = body["next"], {}
        if url:
            assert "limit=10" in url and "offset" not in url
    assert seen == [f"r{n:02}" for n in range(25)]


def test_a_bare_visit_shows_the_last_seven_days_and_says_so(client: Client, people: People) -> None:
    now = timezone.now()
    entry_make(people.tenant, request_id="recent", created_at=now - dt.timedelta(days=1))
    entry_make(people.tenant, request_id="old", created_at=now - dt.timedelta(days=30))
    login(client, people.owner)
    bare = client.get(reverse("dashboard:ledger"))
    week_ago = (timezone.localdate() - dt.timedelta(days=6)).isoformat()
    assert f'value="{week_ago}"' in bare.content.decode()
    assert [e.request_id for e in bare.context["page"].rows] == ["recent"]
    assert bare.context["totals"].totals.requests == 1
    # Clearing "From" asks for every day; a garbage "From" is a form error and keeps the default week.
    everything = client.get(reverse("dashboard:ledger"), {"date_from": ""})
    assert [e.request_id for e in everything.context["page"].rows] == ["recent", "old"]
    garbage = client.get(reverse("dashboard:ledger"), {"date_from": "last tuesday\x00"})
    assert garbage.status_code == 200 and garbage.context["form"].errors["date_from"]
    assert [e.request_id for e in garbage.context["page"].rows] == ["recent"]
    export = client.get(reverse("dashboard:ledger-export"))
    assert b"recent" in b"".join(export.streaming_content)


def test_totals_come_from_the_rollups_plus_rows_ingested_since(client: Client, people: People) -> None:
    now = timezone.now()
    for n in range(6):
        entry_make(people.tenant, created_at=now - dt.timedelta(hours=n), feature="search" if n % 2 else "chat",
                   cost=Decimal("0.001"), counterfactual_cost=Decimal("0.003"))  # fmt: skip
    entry_make(people.other, created_at=now, feature="search", cost=Decimal("5"))
    rollups_refresh()
    entry_make(people.tenant, created_at=now, feature="search", cost=Decimal("0.001"))  # not rolled up yet
    login(client, people.owner)
    key = people.tenant.key.api_key
    for params, requests in (
        ({}, 7),
        ({"feature": "search"}, 4),
        ({"feature": "chat"}, 3),
        ({"key": f"cc_live_{key.lookup_id}…"}, 7),
        ({"key": key.name}, 7),  # the outsider's key may share the name: their rows stay theirs
        ({"endpoint": "chat.completions"}, 7),
    ):
        response = client.get(reverse("dashboard:ledger"), params)
        totals = response.context["totals"]
        assert totals.from_rollups and totals.exact, params
        exact = ledger_totals(entries=ledger_entries(user=people.owner, filters=response.context["form"].to_filters()))
        assert totals.totals == exact and totals.totals.requests == requests, params
    # What the roll-ups hold is what is summed: rows gone from the ledger still count until re-rolled.
    LedgerEntry.objects.filter(project=people.tenant.project, feature="chat").delete()
    chat = client.get(reverse("dashboard:ledger"), {"feature": "chat"}).context["totals"]
    assert chat.from_rollups and chat.totals.requests == 3
    # The outsider's roll-ups never reach the owner's totals, nor the owner's the outsider's: naming the
    # owner's project is a form error, and the outsider's totals stay their own row's.
    login(client, people.outsider)
    theirs = client.get(reverse("dashboard:ledger"), {"project": people.tenant.project.slug}).context["totals"]
    assert theirs.from_rollups and theirs.totals.requests == 1 and theirs.totals.cost == Decimal(5)


def test_totals_leave_out_the_hours_whose_rows_retention_dropped(client: Client, people: People) -> None:
    now = timezone.now()
    entry_make(people.tenant, request_id="kept", created_at=now - dt.timedelta(days=2))
    entry_make(people.tenant, request_id="expired", created_at=now - dt.timedelta(days=90))
    rollups_refresh()
    LedgerEntry.objects.filter(request_id="expired").delete()  # as ledger_retention_apply would
    login(client, people.owner)
    every_day = client.get(reverse("dashboard:ledger"), {"date_from": ""})
    assert [e.request_id for e in every_day.context["page"].rows] == ["kept"]
    totals = every_day.context["totals"]
    assert totals.from_rollups and totals.totals.requests == 1


def test_totals_finer_than_the_rollups_are_capped_and_labelled(
    client: Client, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browse, "TOTALS_SCAN_LIMIT", 5)
    now = timezone.now()
    for n in range(8):
        entry_make(people.tenant, created_at=now - dt.timedelta(minutes=n), status_code=502)
    rollups_refresh()
    login(client, people.owner)
    capped = client.get(reverse("dashboard:ledger"), {"status": "error"})
    totals = capped.context["totals"]
    assert not totals.from_rollups and not totals.exact and totals.totals.requests == 5
    html = capped.content.decode()
    assert "At least: the totals of the newest 5 matching rows" in html and "≥ 5" in html
    small = client.get(reverse("dashboard:ledger"), {"status": "error", "feature": "none-such"}).context["totals"]
    assert small.exact and small.totals.requests == 0


def test_a_page_and_its_totals_cost_a_fixed_number_of_queries(
    client: Client, people: People, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    for n in range(70):
        entry_make(people.tenant, created_at=timezone.now() - dt.timedelta(seconds=n))
    rollups_refresh()
    login(client, people.owner)
    cursor = client.get(reverse("dashboard:ledger")).context["page"].older.token()
    # Session, user, the form's projects, the rows, and the totals (watermark, project ids, oldest kept
    # row, roll-ups, rows since): the same count for seventy rows or a hundred million.
    with django_assert_max_num_queries(13):
        response = client.get(reverse("dashboard:ledger"), {"cursor": cursor, "feature": ""})
    assert len(response.context["page"].rows) == 20
    assert ledger_entries(user=people.owner, filters=LedgerFilters()).count() == 70


@pytest.mark.django_db(transaction=True)
def test_the_export_streams_from_a_server_side_cursor(client: Client, people: People) -> None:
    from django.db import connection

    for n in range(5):
        entry_make(people.tenant, created_at=timezone.now() - dt.timedelta(seconds=n))
    login(client, people.owner)
    response = client.get(reverse("dashboard:ledger-export"))
    stream = iter(response.streaming_content)
    assert next(stream).startswith(b"request_id,")
    next(stream)  # the first row: the query is open now
    with connection.cursor() as cursor:
        cursor.execute("SELECT is_holdable FROM pg_cursors WHERE statement ILIKE '%%ledger_ledgerentry%%'")
        open_cursors = cursor.fetchall()
    # One cursor, fetched a chunk at a time; not holdable, as a holdable one is computed whole up front.
    assert open_cursors == [(False,)]
    assert len(list(stream)) == 4
    response.close()


@pytest.mark.django_db(transaction=True)
def test_served_by_uvicorn_the_export_streams_while_its_cursor_is_still_open(client: Client, people: People) -> None:
    from urllib.request import Request, urlopen

    from django.db import connection

    from apps.dashboard.management.commands.bench_dashboard import LOAD_SQL
    from tests import live

    rows = 30_000  # about 6 MB of CSV: more than socket buffers hold, so the server must wait for the reader
    params = {"tag": "stream", "rows": rows, "first": 1, "last": rows, "span": 5 * 86400, "org": people.tenant.org.pk,
              "projects": [people.tenant.project.pk], "key": people.tenant.key.api_key.pk,
              "now": timezone.now()}  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(LOAD_SQL, params)
    login(client, people.owner)
    server, base = live.start_gateway()  # the same ASGI app serves the dashboard
    try:
        request = Request(
            base.removesuffix("/v1") + "/ledger/export.csv",
            headers={"Cookie": f"{client.cookies['sessionid'].key}={client.cookies['sessionid'].value}"},
        )
        with urlopen(request, timeout=60) as response:  # noqa: S310 (loopback test server)
            first = response.read(64 * 1024)
            assert first.startswith(b"request_id,")
            # The first bytes arrived while the server's export transaction still holds its cursor open;
            # a body read whole before sending would have committed and closed it first.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state = 'idle in transaction' AND query LIKE 'FETCH%%'"
                )
                (open_exports,) = cursor.fetchone()
            rest = response.read()
        assert open_exports == 1, server.output()
        assert (first + rest).count(b"\n") == rows + 1
    finally:
        server.stop()
