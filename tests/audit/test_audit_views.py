"""Reading the audit log: the page, its CSV and the API, for owners and finance only, filtered and paged."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.audit.views import PAGE_SIZE
from apps.dashboard.services import api_token_rotate
from apps.keys.services import key_issue
from apps.tenancy.models import Role
from tests.factories import People, login, member_make

pytestmark = pytest.mark.django_db


def _api(user: Any) -> Client:
    return Client(headers={"Authorization": f"Token {api_token_rotate(user=user).key}"})


def _changes(people: People) -> None:
    """Some changes in the people's organisation (by the owner, through the API) and one in the other's."""
    owner = _api(people.owner)
    for name in ('=HYPERLINK("http://evil")', "second"):
        owner.post(f"/api/projects/{people.tenant.project.slug}/keys/", {"name": name}, content_type="application/json")
    key_issue(project=people.other.project, name="elsewhere")


def test_owners_and_finance_read_their_organisations_log_and_no_one_else(people: People) -> None:
    _changes(people)
    lead = member_make(people.tenant, Role.TEAM_LEAD, team=people.tenant.team)
    for user in (people.owner, people.finance):
        page = login(Client(), user).get("/audit/")
        assert page.status_code == 200 and b"second" in page.content and b"elsewhere" not in page.content
        rows = _api(user).get("/api/audit/").json()["results"]
        assert {r["object_repr"].split(" (")[0] for r in rows if r["object_type"] == "key"} >= {"second"}
        assert all(r["organization"] == people.tenant.org.slug for r in rows)
    for user in (people.member, lead):
        assert login(Client(), user).get("/audit/").status_code == 403
        assert login(Client(), user).get("/audit/export.csv").status_code == 403
        refused = _api(user).get("/api/audit/")
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_denied"
    # The other organisation's owner reads only theirs.
    theirs = _api(people.outsider).get("/api/audit/").json()["results"]
    assert theirs and all(r["organization"] == people.other.org.slug for r in theirs)
    assert b"Audit log" in login(Client(), people.finance).get("/").content  # in the menu for them
    assert b"Audit log" not in login(Client(), people.member).get("/").content


def test_filters_and_pages(people: People) -> None:
    _changes(people)
    api = _api(people.finance)
    keys = api.get("/api/audit/", {"object_type": "key", "action": "create"}).json()
    assert keys["count"] == 3  # the fixture's own key, issued by no one (system), and the owner's two
    assert [r["actor"] for r in keys["results"]] == [people.owner.username, people.owner.username, ""]
    assert api.get("/api/audit/", {"actor": "nobody"}).json()["count"] == 0
    tomorrow = (timezone.localdate() + dt.timedelta(days=1)).isoformat()
    assert api.get("/api/audit/", {"since": tomorrow}).json()["count"] == 0
    assert api.get("/api/audit/", {"until": timezone.localdate().isoformat(), "object_type": "key"}).json()["count"]
    page = login(Client(), people.finance).get("/audit/", {"object_type": "key", "actor": people.owner.username})
    assert page.status_code == 200 and page.content.count(b"<tr>") == 1 + 2  # the header and the owner's two keys
    for garbage in ({"since": "last tuesday"}, {"object_type": "cheese"}, {"action": "drop table"},
                    {"until": "99999-01-01"}, {"actor": "a\x00b"}):  # fmt: skip
        response = api.get("/api/audit/", garbage)
        assert response.status_code == 400 and response.json()["error"]["type"] == "validation_error", garbage
        assert login(Client(), people.finance).get("/audit/", garbage).status_code == 200  # the filter is ignored


def test_the_page_pages_with_a_fixed_number_of_queries(people: People, django_assert_max_num_queries: Any) -> None:
    for n in range(PAGE_SIZE + 5):
        key_issue(project=people.tenant.project, name=f"k{n}")
    client = login(Client(), people.owner)
    with django_assert_max_num_queries(12):
        first = client.get("/audit/")
    assert first.content.count(b"<tr>") == 1 + PAGE_SIZE and b"Older" in first.content
    second = client.get("/audit/", {"page": 2})
    assert (
        second.content.count(b"<tr>")
        == 1 + AuditEvent.objects.filter(organization=people.tenant.org).count() - PAGE_SIZE
    )


def test_the_csv_export_is_filtered_and_spreadsheet_safe(people: People) -> None:
    _changes(people)
    filters = {"object_type": "key", "actor": people.owner.username}
    response = login(Client(), people.finance).get("/audit/export.csv", filters)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header, body = rows[0], rows[1:]
    assert header[:5] == ["at", "organization", "actor", "surface", "action"] and len(body) == 2
    assert {json.loads(row[header.index("after")])["name"] for row in body} == {'=HYPERLINK("http://evil")', "second"}
    objects = sorted(row[header.index("object")] for row in body)
    assert objects[0].startswith("'=HYPERLINK(") and objects[1].startswith("second")  # no formula runs
    assert all(row[header.index("organization")] == people.tenant.org.slug for row in body)
