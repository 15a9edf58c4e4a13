"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright against a live server.

Playwright never downloads a browser here; `make test` installs the system one (`make browser-deps`).
Screenshots land in artifacts/screenshots/ for a person to look at.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from apps.budgets.models import Budget
from apps.ledger.models import LedgerEntry
from apps.ledger.services import rollups_refresh
from tests.dashboard.conftest import shot
from tests.factories import PASSWORD, People, entry_make, people_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _traffic(people: People) -> None:
    """Five days of requests on two models and three features, some cached or routed; then roll up."""
    tenant = people.tenant
    today = timezone.now().replace(hour=10, minute=0, second=0, microsecond=0)
    for day in range(5):
        when = today - dt.timedelta(days=day)
        for i in range(3 + day):
            entry_make(tenant, created_at=when + dt.timedelta(minutes=i), requested_model="gpt-4o",
                       served_model="gpt-4o", feature="support-chat", end_user=f"user-{i % 3}",
                       cost=Decimal("0.0125") * (i + 1), counterfactual_cost=Decimal("0.0125") * (i + 1),
                       latency_ms=300 + 40 * i, ttft_ms=90 + 5 * i, streamed=True)  # fmt: skip
        entry_make(tenant, created_at=when + dt.timedelta(minutes=30), requested_model="gpt-4o",
                   served_model="gpt-4o-mini", feature="search", end_user="user-1", cost=Decimal("0.0021"),
                   counterfactual_cost=Decimal("0.0125"), latency_ms=140, route="route:cheap-first",
                   decision={"kind": "rule", "rule_id": 1, "action": "route"})  # fmt: skip
        entry_make(tenant, created_at=when + dt.timedelta(minutes=45), requested_model="gpt-4o",
                   served_model="gpt-4o", feature="summaries", end_user="user-2", cost=Decimal(0),
                   counterfactual_cost=Decimal("0.0300"), latency_ms=8, cache_hit="semantic")  # fmt: skip
    entry_make(people.other, cost=Decimal("9.99"))  # another organisation: must never show
    rollups_refresh()


def _log_in(page: Any, base: str, people: People) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", people.owner.username)
    page.fill("#id_password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url(f"{base}/")
    assert people.tenant.project.name in page.inner_text("main")


def test_owner_budgets_overview_drilldown_and_export(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    _traffic(people)
    tenant = people.tenant
    _log_in(page, base, people)

    # A budget, through the form.
    page.goto(f"{base}/budgets/")
    page.click("summary:has-text('New budget')")
    form = page.locator("form[action='/budgets/new/']")
    form.locator("[name=organization]").select_option(str(tenant.org.pk))
    form.locator("[name=name]").fill("Support bot monthly")
    form.locator("[name=scope]").select_option("project")
    form.locator("[name=project]").select_option(str(tenant.project.pk))
    form.locator("[name=amount_usd]").fill("25")
    form.locator("[name=mode]").select_option("soft")
    form.locator("button.primary").click()
    page.wait_for_url(f"{base}/budgets/*/")
    budget = Budget.objects.get(name="Support bot monthly")
    assert budget.project_id == tenant.project.pk and budget.amount_usd == Decimal(25)
    page.goto(f"{base}/budgets/")
    assert "Support bot monthly" in page.inner_text("table.data")
    shot(page, "budgets")

    # The overview: the chart's numbers are the ledger's.
    page.goto(f"{base}/overview/?scope=project:{tenant.project.slug}")
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart') !== undefined")
    chart = page.evaluate(
        """() => {
          const chart = Chart.getChart('spend-chart');
          return {
            labels: chart.data.labels,
            datasets: chart.data.datasets.map(d => ({label: d.label, sum: d.data.reduce((a, b) => a + b, 0)})),
            bars: chart.getDatasetMeta(0).data.filter(bar => bar.height > 0).length,
          };
        }"""
    )
    by_model = dict(
        LedgerEntry.objects.filter(project=tenant.project).values_list("served_model").annotate(s=Sum("cost"))
    )
    assert {d["label"]: pytest.approx(d["sum"]) for d in chart["datasets"]} == {
        model: float(total) for model, total in by_model.items()
    }
    assert len(chart["labels"]) == 7 and chart["bars"] == 5  # five days with spend, drawn
    main = page.inner_text("main")
    assert "Support bot monthly" in main and "projected" in main
    assert "Semantic" not in main and "Cache" in main and "Routing" in main
    shot(page, "overview")

    # Split by feature through the selector; the chart redraws with features.
    page.select_option("#id_group_by", "feature")
    page.click("#overview-form button.primary")
    page.wait_for_url("**group_by=feature**")
    labels = page.evaluate("() => Chart.getChart('spend-chart').data.datasets.map(d => d.label)")
    assert set(labels) == {"support-chat", "search", "summaries"}

    # Click today's support-chat bar: the ledger opens on that project, feature and day.
    position = page.evaluate(
        """() => {
          const chart = Chart.getChart('spend-chart');
          const i = chart.data.datasets.findIndex(d => d.label === 'support-chat');
          const bar = chart.getDatasetMeta(i).data[chart.data.labels.length - 1];
          return {x: bar.x, y: (bar.y + bar.base) / 2};
        }"""
    )
    page.locator("#spend-chart").click(position=position)
    page.wait_for_url("**/ledger/?**")
    today = timezone.localdate().isoformat()
    assert f"date_from={today}" in page.url and "feature=support-chat" in page.url
    assert f"project={tenant.project.slug}" in page.url
    rows = page.locator("table.ledger tbody tr")
    expected = LedgerEntry.objects.filter(
        project=tenant.project, feature="support-chat", created_at__date=timezone.localdate()
    ).count()
    assert rows.count() == expected == 3
    # At 1440 px every column, the route and status included, is on screen: the table needs no sideways scroll.
    assert page.viewport_size["width"] == 1440
    fits = (
        "() => { const box = document.querySelector('table.ledger').parentElement;"
        " return box.scrollWidth <= box.clientWidth; }"
    )
    assert page.evaluate(fits)
    shot(page, "ledger")

    # Export what the filter shows.
    with page.expect_download() as download_info:
        page.click("text=Export CSV")
    download = download_info.value
    text = Path(download.path()).read_text()
    exported = list(csv.DictReader(io.StringIO(text)))
    assert len(exported) == expected
    assert {row["feature"] for row in exported} == {"support-chat"}
    assert sum(Decimal(row["cost_usd"]) for row in exported) == sum(
        LedgerEntry.objects.filter(
            project=tenant.project, feature="support-chat", created_at__date=timezone.localdate()
        ).values_list("cost", flat=True)
    )
    _show_export(page, download.suggested_filename, exported)
    shot(page, "export")

    # Finance's monthly report page, where the exports live: the FOCUS file's BilledCost adds up to the ledger.
    page.goto(f"{base}/reports/")
    assert "FOCUS 1.2 cost and usage" in page.inner_text("main")
    shot(page, "reports")
    with page.expect_download() as download_info:
        page.locator("tr", has_text="FOCUS 1.2 cost and usage").locator("text=Download CSV").click()
    focus = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert sum(Decimal(row["BilledCost"]) for row in focus) == sum(
        LedgerEntry.objects.filter(organization=tenant.org, created_at__gte=month_start).values_list("cost", flat=True)
    )


def _show_export(page: Any, filename: str, rows: list[dict[str, str]]) -> None:
    """Render the downloaded CSV as a table in the app's style, so the screenshot shows what was exported."""
    columns = ["request_id", "created_at", "project", "feature", "served_model", "cost_usd", "latency_ms"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{row[c]}</td>" for c in columns) + "</tr>" for row in rows)
    # Still on the ledger's URL, so the app's stylesheet resolves.
    page.set_content(
        f"<html><head><link rel='stylesheet' href='/static/css/app.css'></head><body><main class='page'>"
        f"<h1>{filename}</h1><p class='muted'>{len(rows)} rows downloaded from the ledger's Export CSV</p>"
        f"<section class='card flush'><table class='data ledger'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></section></main></body></html>"
    )
    page.wait_for_load_state("load")


def test_outsider_sees_none_of_it(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    _traffic(people)
    page.goto(f"{base}/login/")
    page.fill("#id_username", people.outsider.username)
    page.fill("#id_password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url(f"{base}/")
    response = page.goto(f"{base}/overview/?scope=project:{people.tenant.project.slug}")
    assert response.status == 404
    page.goto(f"{base}/overview/")
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart') !== undefined")
    total = page.evaluate(
        "() => Chart.getChart('spend-chart').data.datasets.reduce((s, d) => s + d.data.reduce((a, b) => a + b, 0), 0)"
    )
    assert total == pytest.approx(9.99)


def test_main_pages_run_under_the_content_security_policy(page: Any, live_server: Any) -> None:
    """No page needs an inline script, handler or style: Chromium reports no CSP violation on any of them."""
    base = live_server.url
    people = people_make()
    _traffic(people)
    tenant = people.tenant
    Budget.objects.create(organization=tenant.org, name="capped", scope="project", project=tenant.project,
                          amount_usd=Decimal("0.05"))  # fmt: skip
    violations: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.goto(f"{base}/login/")
    _log_in(page, base, people)
    slug, org = tenant.project.slug, tenant.org.slug
    paths = [
        "/", "/overview/", "/ledger/", "/budgets/", "/alerts/", "/reports/", "/account/token/",
        f"/orgs/{org}/providers/", f"/projects/{slug}/", f"/projects/{slug}/cache/", f"/projects/{slug}/routing/",
        f"/projects/{slug}/deployments/", f"/projects/{slug}/break-even/", f"/projects/{slug}/batches/", "/audit/",
        "/api/docs/",
    ]  # fmt: skip
    for path in paths:
        response = page.goto(f"{base}{path}")
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("load")
    # Swagger UI (from the sidecar package's static files) drew the API from /api/schema/.
    page.goto(f"{base}/api/docs/")
    page.wait_for_selector("text=CostControl management API")
    assert page.locator(".opblock").count() > 50
    # Chart.js drew (its script is ours to serve), and the budget bars got their widths from data-width.
    page.goto(f"{base}/overview/?scope=project:{slug}")
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart') !== undefined")
    page.goto(f"{base}/budgets/")
    width = page.evaluate("() => document.querySelector('.bar > span[data-width]').style.width")
    assert width == "100%"  # spend is far over the 5-cent budget: the bar is full, not wider
    # A confirm() from data-confirm still guards a destructive button.
    page.goto(f"{base}/projects/{slug}/")
    asked: list[str] = []
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.locator("button", has_text="Revoke").first.click()
    assert asked and asked[0].startswith("Revoke cc_live_")
    assert not violations, violations


def test_the_prices_table_shows_each_models_long_context_rate_and_fits_the_screen(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    _log_in(page, base, people)
    page.goto(f"{base}/orgs/{people.tenant.org.slug}/providers/")
    table = page.locator(f"#provider-{people.tenant.provider.pk} table.data")
    row = table.locator("tr", has=page.locator("code", has_text="gpt-5.4")).first
    assert "over 272,000 input tokens: input ×2, output ×1.5" in row.inner_text()
    assert "none" in table.locator("tr", has=page.locator("code", has_text="gpt-4o-mini")).first.inner_text()
    assert page.viewport_size["width"] == 1440
    fits = "(t) => t.parentElement.scrollWidth <= t.parentElement.clientWidth"
    assert table.evaluate(fits), "the prices table needs a sideways scroll at 1440 px"
    shot(page, "providers")
