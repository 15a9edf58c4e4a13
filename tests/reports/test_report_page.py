"""The monthly report page: scoped, read from roll-ups in a fixed number of queries."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.ledger.services import rollups_refresh
from apps.reports.services import usage_import
from tests.factories import People, entry_make, login
from tests.reports.helpers import at, ledger_mix, other_team_project

pytestmark = pytest.mark.django_db


def _report(client: Client, people: People, **params: str) -> str:
    query = {"org": people.tenant.org.slug, "month": "2025-09", **params}
    response = client.get(reverse("reports:report"), query)
    assert response.status_code == 200
    return response.content.decode()


def _seed(people: People) -> None:
    hidden = other_team_project(people)
    entry_make(people.tenant, created_at=at(2), feature="chat", cost=Decimal("1.5"), counterfactual_cost=Decimal(4))
    entry_make(people.tenant, created_at=at(3), project=hidden, feature="invoices", served_model="gpt-4.1",
               cost=Decimal("20"), counterfactual_cost=Decimal(25))  # fmt: skip
    usage_import(
        organization=people.tenant.org,
        project=hidden,
        content=b"date,model,input_tokens,output_tokens,amount.value\n2025-09-05,gpt-4o,1000,10,7.25\n",
    )
    rollups_refresh()


def test_finance_sees_the_whole_organisation_with_sources_and_savings(client: Client, people: People) -> None:
    _seed(people)
    login(client, people.finance)
    page = _report(client, people)
    assert people.tenant.project.name in page and "Billing bot" in page
    assert "$28.75" in page  # spend: 1.5 + 20 + 7.25
    assert "$21.50" in page  # through the gateway
    assert "$7.25" in page  # imported
    assert "$36.25" in page and "$7.50" in page  # without CostControl (4 + 25 + 7.25) and saved
    assert "invoices" in page and "<code>gpt-4.1</code>" in page
    assert "Import OpenAI usage" not in page  # an import is a write: owners and team leads only
    assert "focus.csv?org=" in page and "since=2025-09-01&amp;until=2025-10-01" in page


def test_developer_sees_only_their_teams_projects(client: Client, people: People) -> None:
    _seed(people)
    login(client, people.member)
    page = _report(client, people)
    assert people.tenant.project.name in page and "Billing bot" not in page
    assert "$1.50" in page and "$28.75" not in page and "invoices" not in page
    assert "Import OpenAI usage" not in page


def test_outsider_gets_404_for_another_organisation(client: Client, people: People) -> None:
    login(client, people.outsider)
    response = client.get(reverse("reports:report"), {"org": people.tenant.org.slug})
    assert response.status_code == 404
    assert client.get(reverse("reports:report")).status_code == 200  # their own organisation


def test_other_months_are_not_counted(client: Client, people: People) -> None:
    _seed(people)
    login(client, people.finance)
    page = _report(client, people, month="2025-08")
    assert "No spend this month." in page and "$28.75" not in page


def test_report_queries_do_not_grow_with_the_data(client: Client, people: People) -> None:
    login(client, people.finance)
    entry_make(people.tenant, created_at=at(1))
    rollups_refresh()
    with CaptureQueriesContext(connection) as small:
        _report(client, people)
    _seed(people)
    ledger_mix(people)
    for day in range(1, 29):
        entry_make(people.tenant, created_at=at(day, day % 24), feature=f"feature-{day}", served_model=f"m-{day % 5}")
    rollups_refresh()
    with CaptureQueriesContext(connection) as large:
        page = _report(client, people)
    assert "feature-28" in page
    assert len(large.captured_queries) == len(small.captured_queries) <= 12


def test_big_months_offer_a_background_export(client: Client, people: People, settings: object) -> None:
    settings.REPORTS_DIRECT_EXPORT_MAX_ROWS = 2  # type: ignore[attr-defined]
    ledger_mix(people)
    rollups_refresh()
    login(client, people.finance)
    page = _report(client, people)
    assert "Prepare file" in page and 'name="kind" value="focus"' in page
    settings.REPORTS_DIRECT_EXPORT_MAX_ROWS = 100  # type: ignore[attr-defined]
    assert "Prepare file" not in _report(client, people)


def test_report_requires_login(client: Client) -> None:
    response = client.get(reverse("reports:report"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_a_date_range_overrides_the_month_for_the_report_and_its_exports(client: Client, people: People) -> None:
    _seed(people)
    login(client, people.finance)
    page = _report(client, people, date_from="2025-09-02", date_to="2025-09-03")
    assert "Spend report" in page and "2025-09-02 to 2025-09-03" in page
    assert "$21.50" in page and "$28.75" not in page  # the import of 09-05 is outside the days
    assert "since=2025-09-02&amp;until=2025-09-04" in page and "since=2025-09-01" not in page
    assert "No spend in these days." in _report(client, people, date_from="2025-09-20", date_to="2025-09-21")
    # From alone runs to today; To alone starts on the first of its month.
    assert "$28.75" in _report(client, people, date_from="2025-09-01")
    assert "2025-09-01 to 2025-09-02" in _report(client, people, date_to="2025-09-02")


def test_the_report_offers_presets_including_this_month(client: Client, people: People) -> None:
    login(client, people.finance)
    page = _report(client, people)
    today = dt.datetime.now(dt.UTC).date()
    this_month = f"date_from={today.replace(day=1):%Y-%m-%d}&amp;date_to={today:%Y-%m-%d}"
    assert f'{this_month}">This month</a>' in page
    assert ">Last month</a>" in page and ">Last 7 days</a>" in page
    assert 'type="date" name="date_from"' in page and 'type="date" name="date_to"' in page


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"date_from": "yesterday"}, "Enter a valid date."),
        ({"date_from": "2025-09-10", "date_to": "2025-09-01"}, "“To” must not be before “From”."),
        ({"date_from": "0001-01-01"}, "Pick a day from 2000-01-01"),
        ({"date_to": "9999-12-31"}, "Pick a day from 2000-01-01"),
        ({"date_to": "2025-02-30"}, "Enter a valid date."),
        ({"date_from": "2025-09-01\x00"}, "Enter a valid date."),
    ],
)
def test_bad_dates_are_form_errors(client: Client, people: People, params: dict[str, str], error: str) -> None:
    login(client, people.finance)
    response = client.get(reverse("reports:report"), {"org": people.tenant.org.slug, **params})
    assert response.status_code == 400
    html = response.content.decode()
    assert f'<small class="error">{error}' in html.replace("&#x27;", "'")
    assert "Monthly report" in html  # the current month's figures stay on the page


def test_an_outsider_cannot_reach_another_organisations_range(client: Client, people: People) -> None:
    _seed(people)
    login(client, people.outsider)
    query = {"org": people.tenant.org.slug, "date_from": "2025-09-01", "date_to": "2025-09-30"}
    assert client.get(reverse("reports:report"), query).status_code == 404
