"""The overview page and the series API, through the real HTTP surface, fed from roll-ups."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.budgets.models import Alert, AlertKind
from apps.budgets.services import budget_create
from apps.ledger.models import LedgerEntry
from apps.ledger.services import rollups_refresh
from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from tests.factories import People, Tenant, entry_make, login

pytestmark = pytest.mark.django_db


def _traffic(tenant: Tenant, *, days: int = 3) -> None:
    """A few requests a day over ``days`` days: two models, two features, cached, routed and plain ones."""
    today = timezone.now().replace(hour=9, minute=0, second=0, microsecond=0)
    for day in range(days):
        when = today - dt.timedelta(days=day)
        entry_make(tenant, created_at=when, served_model="gpt-4o", feature="chat", end_user="alice",
                   cost=Decimal("0.30"), counterfactual_cost=Decimal("0.30"), latency_ms=450, ttft_ms=120)  # fmt: skip
        entry_make(tenant, created_at=when, served_model="gpt-4o-mini", feature="search", end_user="bob",
                   cost=Decimal("0.02"), counterfactual_cost=Decimal("0.30"), latency_ms=90,
                   route="route:cheap-first",
                   decision={"kind": "rule", "rule_id": 1, "action": "route"})  # fmt: skip
        entry_make(tenant, created_at=when, served_model="gpt-4o", feature="chat", end_user="bob",
                   cost=Decimal("0"), counterfactual_cost=Decimal("0.30"), latency_ms=5, cache_hit="exact")  # fmt: skip
    rollups_refresh()


def _chart(response: Any) -> dict[str, Any]:
    html = response.content.decode()
    start = html.index('<script id="overview-data" type="application/json">') + len(
        '<script id="overview-data" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def _scope(people: People) -> str:
    return f"project:{people.tenant.project.slug}"


def test_overview_requires_login(client: Client, people: People) -> None:
    for url in (reverse("dashboard:overview"), reverse("dashboard:account-token")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_overview_shows_totals_savings_latency_and_a_chart_matching_the_ledger(client: Client, people: People) -> None:
    _traffic(people.tenant)
    _traffic(people.other)  # another organisation's spend never shows
    login(client, people.owner)
    response = client.get(reverse("dashboard:overview"), {"scope": _scope(people)})
    assert response.status_code == 200
    html = response.content.decode()
    assert "$0.96" in html  # 3 days × $0.32
    assert "$1.74" in html  # saved: 3 × (0.90 − 0.32)
    assert "33.3%" in html  # one request in three was a cache hit
    assert "vendor/chartjs/chart.umd.js" in html

    chart = _chart(response)
    assert chart["bucket"] == "day" and len(chart["labels"]) == 7
    db_total = LedgerEntry.objects.filter(project=people.tenant.project).aggregate(s=Sum("cost"))["s"]
    chart_total = sum(sum(ds["data"]) for ds in chart["datasets"])
    assert chart_total == pytest.approx(float(db_total))
    assert {ds["label"] for ds in chart["datasets"]} == {"gpt-4o", "gpt-4o-mini"}
    levers = {lever["label"]: lever["savings"] for lever in chart["levers"]}
    assert levers == {"Cache": pytest.approx(0.90), "Routing": pytest.approx(0.84), "None": 0}


def test_overview_splits_by_dimension_and_links_to_the_ledger_slice(client: Client, people: People) -> None:
    _traffic(people.tenant)
    login(client, people.owner)
    today = timezone.localdate()
    response = client.get(
        reverse("dashboard:overview"),
        {"scope": _scope(people), "group_by": "end_user", "date_from": today.isoformat(), "date_to": today.isoformat()},
    )
    chart = _chart(response)
    assert chart["bucket"] == "hour" and len(chart["labels"]) == 24  # one day: hourly bars
    assert {ds["key"]: sum(ds["data"]) for ds in chart["datasets"]} == {"alice": 0.30, "bob": 0.02}
    assert chart["drill"] == {"url": "/ledger/", "project": people.tenant.project.slug, "param": "end_user",
                              "other": "*other"}  # fmt: skip
    html = response.content.decode()
    link = f"/ledger/?date_from={today}&amp;date_to={today}&amp;project={people.tenant.project.slug}&amp;model=gpt-4o"
    assert link in html
    ledger = client.get(link.replace("&amp;", "&")).content.decode()
    assert '<span class="label">Requests</span><span class="value">2</span>' in ledger  # today's gpt-4o rows


def test_overview_org_scope_budget_projection_and_alerts(client: Client, people: People) -> None:
    _traffic(people.tenant)
    tenant = people.tenant
    budget_create(organization=tenant.org, name="Monthly cap", scope="organization", amount_usd=Decimal("100"))
    Alert.objects.create(organization=tenant.org, kind=AlertKind.SPEND_ANOMALY, dedup_key="a1",
                         title="Spend spike on chat", message="3× the usual hourly spend")  # fmt: skip
    login(client, people.owner)
    html = client.get(reverse("dashboard:overview"), {"scope": f"org:{tenant.org.slug}"}).content.decode()
    assert "Monthly cap" in html and "of $100.00" in html and "projected" in html
    assert "Spend spike on chat" in html
    assert f"{tenant.org.name} — all projects" in html


def test_outsider_gets_404_for_a_scope_they_cannot_see(client: Client, people: People) -> None:
    _traffic(people.tenant)
    login(client, people.outsider)
    for scope in (_scope(people), f"org:{people.tenant.org.slug}"):
        assert client.get(reverse("dashboard:overview"), {"scope": scope}).status_code == 404
    own = client.get(reverse("dashboard:overview"))
    assert own.status_code == 200
    assert people.tenant.project.name not in own.content.decode()
    assert _chart(own)["datasets"] == []


def test_developer_sees_only_their_teams_projects(client: Client, people: People) -> None:
    from apps.tenancy.services import project_create

    hidden = project_create(organization=people.tenant.org, name="Other team's", slug="hidden-project")
    login(client, people.member)
    assert client.get(reverse("dashboard:overview"), {"scope": "project:hidden-project"}).status_code == 404
    assert hidden.name not in client.get(reverse("dashboard:overview")).content.decode()


@pytest.mark.parametrize("rows", [3, 30])
def test_overview_query_count_does_not_grow_with_rollups(
    client: Client, people: People, rows: int, django_assert_max_num_queries: Any
) -> None:
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    tenant = people.tenant
    for i in range(rows):
        entry_make(tenant, created_at=now - dt.timedelta(hours=i), served_model=f"m{i % 12}", feature=f"f{i % 7}",
                   end_user=f"u{i}", cost=Decimal("0.10"), counterfactual_cost=Decimal("0.20"),
                   cache_hit="exact" if i % 2 else "", latency_ms=60)  # fmt: skip
    rollups_refresh()
    budget_create(organization=tenant.org, name="cap", scope="organization", amount_usd=Decimal("10"))
    login(client, people.owner)
    for group_by in ("model", "end_user", "key", "endpoint"):
        # A constant: one query per top table (six dimensions), one the ledger's exact latency percentiles, …
        with django_assert_max_num_queries(21):
            response = client.get(reverse("dashboard:overview"), {"scope": _scope(people), "group_by": group_by})
        assert response.status_code == 200
        assert sum(sum(ds["data"]) for ds in _chart(response)["datasets"]) == pytest.approx(0.10 * rows)


def test_overview_top_tables_and_chart_agree_with_the_ledger_per_dimension(client: Client, people: People) -> None:
    """Each split is read from its own narrow roll-up; all of them add up to the same ledger."""
    _traffic(people.tenant)
    entry_make(people.tenant, api_key=None, served_model="gpt-4o", feature="chat", end_user="carol",
               cost=Decimal("0.05"), counterfactual_cost=Decimal("0.05"))  # fmt: skip
    rollups_refresh()
    login(client, people.owner)
    ledger = LedgerEntry.objects.filter(project=people.tenant.project)
    expected = {
        "model": dict(ledger.values_list("served_model").annotate(s=Sum("cost"))),
        "feature": dict(ledger.values_list("feature").annotate(s=Sum("cost"))),
        "end_user": dict(ledger.values_list("end_user").annotate(s=Sum("cost"))),
    }
    for group_by, totals in expected.items():
        response = client.get(reverse("dashboard:overview"), {"scope": _scope(people), "group_by": group_by})
        chart = {ds["key"]: sum(ds["data"]) for ds in _chart(response)["datasets"]}
        assert chart == {key: pytest.approx(float(total)) for key, total in totals.items()}, group_by
    response = client.get(reverse("dashboard:overview"), {"scope": _scope(people), "group_by": "key"})
    by_key = {ds["key"]: sum(ds["data"]) for ds in _chart(response)["datasets"]}
    assert by_key == {people.tenant.key.api_key.lookup_id: pytest.approx(0.96), "": pytest.approx(0.05)}
    tops = {t["name"]: {row["row"].key: row["row"].cost for row in t["rows"]} for t in response.context["top"]}
    assert tops["end_user"] == {"alice": Decimal("0.90"), "bob": Decimal("0.06"), "carol": Decimal("0.05")}
    assert tops["model"] == {"gpt-4o": Decimal("0.95"), "gpt-4o-mini": Decimal("0.06")}
    assert tops["key"] == {people.tenant.key.api_key.lookup_id: Decimal("0.96"), "": Decimal("0.05")}


def test_overview_splits_spend_by_endpoint(client: Client, people: People) -> None:
    """Chat, responses, embeddings and batch lines each get their share of the chart, the top table and a
    link to their ledger rows."""
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    costs = {"chat.completions": "0.30", "responses": "0.20", "embeddings": "0.01", "batch.responses": "0.05"}
    for endpoint, cost in costs.items():
        entry_make(people.tenant, created_at=now, endpoint=endpoint, cost=Decimal(cost),
                   counterfactual_cost=Decimal(cost))  # fmt: skip
    rollups_refresh()
    login(client, people.owner)
    response = client.get(reverse("dashboard:overview"), {"scope": _scope(people), "group_by": "endpoint"})
    chart = {ds["key"]: sum(ds["data"]) for ds in _chart(response)["datasets"]}
    assert chart == {endpoint: pytest.approx(float(cost)) for endpoint, cost in costs.items()}
    [top] = [t for t in response.context["top"] if t["name"] == "endpoint"]
    assert {row["row"].key: row["row"].cost for row in top["rows"]} == {e: Decimal(c) for e, c in costs.items()}
    link = next(row["link"] for row in top["rows"] if row["row"].key == "responses")
    ledger = client.get(link)
    assert [entry.endpoint for entry in ledger.context["page"].rows] == ["responses"]


def test_overview_ignores_bad_input(client: Client, people: People) -> None:
    login(client, people.owner)
    response = client.get(reverse("dashboard:overview"), {"date_from": "2026-13-40", "group_by": "nope"})
    assert response.status_code == 200
    chart = _chart(response)
    assert chart["groupBy"] == "model" and len(chart["labels"]) == 7
    reversed_range = client.get(reverse("dashboard:overview"), {"date_from": "2026-11-10", "date_to": "2026-11-01"})
    assert "must not be before" in reversed_range.content.decode()


# API token page -----------------------------------------------------------------------------------


def test_token_page_creates_shows_once_and_revokes(client: Client, people: People) -> None:
    login(client, people.member)
    assert "no API token yet" in client.get(reverse("dashboard:account-token")).content.decode()
    response = client.post(reverse("dashboard:account-token"), {"action": "create", "scope": "read"})
    token = Token.objects.get(user=people.member)
    assert token.key in response.content.decode() and response["Cache-Control"] == "no-store"
    later = client.get(reverse("dashboard:account-token")).content.decode()
    assert token.key not in later and token.key[:6] in later and "<strong>read</strong> token" in later
    client.post(reverse("dashboard:account-token"), {"action": "revoke"})
    assert not Token.objects.filter(user=people.member).exists()


# Series API ---------------------------------------------------------------------------------------


def _api(user: Any) -> Client:
    token, _ = Token.objects.get_or_create(user=user)
    return Client(headers={"Authorization": f"Token {token.key}"})


def test_series_api_needs_a_token(people: People) -> None:
    assert Client().get(reverse("api-series-spend")).status_code in (401, 403)
    bad = Client(headers={"Authorization": "Token nope"})
    assert bad.get(reverse("api-series-summary")).status_code in (401, 403)


def test_series_spend_per_day_by_feature(people: People) -> None:
    _traffic(people.tenant)
    today = timezone.localdate()
    response = _api(people.owner).get(
        reverse("api-series-spend"),
        {
            "project": people.tenant.project.slug,
            "since": str(today - dt.timedelta(days=6)),
            "until": str(today),
            "group_by": "feature",
            "bucket": "day",
        },  # fmt: skip
    )
    assert response.status_code == 200
    body = response.json()
    assert body["project"] == people.tenant.project.slug and len(body["buckets"]) == 7
    totals = {s["key"]: Decimal(s["total"]) for s in body["series"]}
    assert totals == {"chat": Decimal("0.90"), "search": Decimal("0.06")}
    assert Decimal(body["series"][0]["values"][-1]) == Decimal("0.30")  # today's chat spend, last bucket


def test_series_summary_totals_levers_and_percentiles(people: People) -> None:
    _traffic(people.tenant)
    body = _api(people.finance).get(reverse("api-series-summary"), {"project": people.tenant.project.slug}).json()
    assert body["requests"] == 9 and Decimal(body["cost"]) == Decimal("0.96")
    assert Decimal(body["savings"]) == Decimal("1.74")
    assert body["cache_hit_rate"] == pytest.approx(1 / 3, abs=1e-4)
    levers = {lever["lever"]: Decimal(lever["savings"]) for lever in body["savings_by_lever"]}
    assert levers == {"cache": Decimal("0.90"), "routing": Decimal("0.84"), "none": Decimal(0)}
    # A saving of exactly nothing is a plain number, not "0E-8" (one notation for amounts in every API).
    assert "E" not in "".join(lever["savings"] + lever["cost"] for lever in body["savings_by_lever"])
    none = next(lever for lever in body["savings_by_lever"] if lever["lever"] == "none")
    assert none["savings"] == "0.00000000"
    # Latencies 5, 90, 450 ms ×3: percentiles are the ledger's own values, not histogram estimates.
    assert body["latency_ms"]["p50"] == 90 and body["latency_ms"]["p95"] == 450
    assert body["ttft_ms"]["count"] == 3 and 100 <= body["ttft_ms"]["p50"] <= 200
    assert body["streamed"] == 0


def test_series_api_outsider_gets_404_and_sees_only_own(people: People) -> None:
    _traffic(people.tenant)
    api = _api(people.outsider)
    for name in ("api-series-spend", "api-series-summary"):
        assert api.get(reverse(name), {"project": people.tenant.project.slug}).status_code == 404
    assert api.get(reverse("api-series-summary")).json()["requests"] == 0


def test_series_api_validates_parameters(people: People) -> None:
    api = _api(people.owner)
    url = reverse("api-series-spend")
    for params in ({"group_by": "colour"}, {"bucket": "week"}, {"since": "yesterday"},
                   {"since": "2026-11-10", "until": "2026-11-01"}, {"since": "2025-01-01", "until": "2026-11-01",
                   "bucket": "hour"}, {"limit": "0"}):  # fmt: skip
        assert api.get(url, params).status_code == 400, params


def test_overview_splits_one_features_spend_by_vendor(client: Client, people: People) -> None:
    """The same feature served by an OpenAI-kind and an Anthropic-kind provider: one total, split by vendor."""
    claude = provider_create(
        organization=people.tenant.org, name="claude", kind=ProviderKind.SIMULATED_ANTHROPIC,
        base_url="http://127.0.0.1:9/v1",
    )  # fmt: skip
    when = timezone.now().replace(minute=0, second=0, microsecond=0)
    entry_make(people.tenant, created_at=when, feature="triage", cost=Decimal("0.10"))
    entry_make(people.tenant, created_at=when, feature="triage", provider=claude, served_model="claude-haiku-4-5",
               cost=Decimal("0.25"))  # fmt: skip
    entry_make(people.tenant, created_at=when, feature="triage", provider=None, cost=Decimal("0"), status_code=429)
    rollups_refresh()
    login(client, people.owner)
    response = client.get(reverse("dashboard:overview"), {"scope": _scope(people), "group_by": "vendor"})
    chart = {ds["key"]: sum(ds["data"]) for ds in _chart(response)["datasets"]}
    assert chart == {"OpenAI": pytest.approx(0.10), "Anthropic": pytest.approx(0.25), "": 0}
    tops = {t["name"]: {row["row"].key: row["row"].cost for row in t["rows"]} for t in response.context["top"]}
    assert tops["vendor"] == {"Anthropic": Decimal("0.25"), "OpenAI": Decimal("0.10"), "": Decimal(0)}
    assert tops["feature"] == {"triage": Decimal("0.35")}
    assert "Top vendors" in response.content.decode()


def _amounts_after(html: str, marker: str) -> list[str]:
    """The amounts ("$…" or "-$…") printed after ``marker``, in order."""
    return re.findall(r"-?\$[\d,]+\.\d+", html[html.index(marker) :])


def test_cache_page_saved_agrees_with_the_overviews_cache_lever(client: Client, people: People) -> None:
    tenant = people.tenant
    day = timezone.now().replace(hour=9, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    _traffic(tenant, days=1)  # today: rows of every lever, rolled up
    for cost, hit in ((Decimal("0"), "exact"), (Decimal("0.0125"), "semantic"), (Decimal("0.31"), "semantic")):
        # A semantic hit pays for its embedding; the last one cost more than the request it replaced.
        entry_make(tenant, created_at=day, cost=cost, counterfactual_cost=Decimal("0.30"), cache_hit=hit)
    entry_make(tenant, created_at=day, cost=Decimal("0.02"), counterfactual_cost=Decimal("0.30"))  # no cache
    rollups_refresh()
    # Rows the roll-ups have not reached yet move neither page.
    entry_make(tenant, created_at=day, cost=Decimal("0"), counterfactual_cost=Decimal("5"), cache_hit="exact")
    login(client, people.finance)
    overview = client.get(
        reverse("dashboard:overview"), {"scope": _scope(people), "date_from": day.date(), "date_to": day.date()}
    ).content.decode()
    cache = client.get(reverse("cache:project", kwargs={"slug": tenant.project.slug})).content.decode()
    cost, from_overview = _amounts_after(overview, 'lever-cache">Cache</span>')[:2]  # its Cost, then Saved
    assert cost == "$0.3225"
    from_cache = _amounts_after(cache, f"<td>{day:%Y-%m-%d}</td>")[0]
    # 0.30 × 3 − (0 + 0.0125 + 0.31) = 0.5775, shown to four places on both pages.
    assert from_overview == from_cache == "$0.5775"


def test_a_negative_saving_is_drawn_as_a_cost_not_in_green_on_every_page(client: Client, people: People) -> None:
    tenant = people.tenant
    when = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    # A cascade's escalated cheap call and a semantic hit that cost more than the request they replaced.
    entry_make(tenant, created_at=when, cost=Decimal("0.50"), counterfactual_cost=Decimal("0.30"),
               decision={"kind": "rule", "rule_id": 1, "action": "cascade"})  # fmt: skip
    entry_make(tenant, created_at=when, cost=Decimal("0.40"), counterfactual_cost=Decimal("0.30"), cache_hit="semantic")
    rollups_refresh()
    login(client, people.finance)
    pages = {
        "overview": client.get(reverse("dashboard:overview"), {"scope": _scope(people)}).content.decode(),
        "ledger": client.get(reverse("dashboard:ledger")).content.decode(),
        "cache": client.get(reverse("cache:project", kwargs={"slug": tenant.project.slug})).content.decode(),
        "report": client.get(
            reverse("reports:report"), {"org": tenant.org.slug, "month": f"{when:%Y-%m}"}
        ).content.decode(),
    }
    for name, html in pages.items():
        assert re.search(r'class="(value|num) bad">-\$0\.', html), name
        assert not re.search(r'good">-\$', html), name
    assert 'class="value bad">-$0.30</span>' in pages["overview"]  # Saved: 0.60 would have cost, 0.90 paid
    assert 'class="num bad">-$0.1000</td>' in pages["cache"]


def test_one_label_for_unknown_values_on_every_page(client: Client, people: People) -> None:
    tenant = people.tenant
    when = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    entry_make(tenant, created_at=when, feature="", end_user="", served_model="", status_code=502)
    rollups_refresh()
    login(client, people.finance)
    overview = client.get(reverse("dashboard:overview"), {"scope": _scope(people), "group_by": "feature"})
    ledger = client.get(reverse("dashboard:ledger")).content.decode()
    report = client.get(reverse("reports:report"), {"org": tenant.org.slug, "month": f"{when:%Y-%m}"})
    pages = {"overview": overview.content.decode(), "ledger": ledger, "report": report.content.decode()}
    for name, html in pages.items():
        assert "(unknown)" in html, name
        assert "(none)" not in html, name
    assert "<td>—</td>" not in ledger  # no feature, no end user: the same label as everywhere else
    assert _chart(overview)["datasets"][0]["label"] == "(unknown)"
