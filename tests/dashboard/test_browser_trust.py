"""The dashboard's figures agree with the ledger, rules warn when shadowed, budgets are editable, phones work.

Each test walks a page in headless Chromium the way a person would (see conftest.py for the browser) and
checks what it shows against the ledger and the alert table. Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent, ObjectType
from apps.budgets.models import Alert, AlertKind, Budget, BudgetScope
from apps.budgets.services import anomalies_detect, budget_create, budgets_check_thresholds
from apps.ledger.models import LedgerEntry, Source
from apps.ledger.services import rollups_refresh
from apps.routing.models import RoutingRule
from apps.tenancy.models import Role
from apps.tenancy.services import project_create, project_set_default_provider
from tests.dashboard.conftest import shot
from tests.factories import PASSWORD, Tenant, entry_make, member_make, people_make, tenant_make
from tests.gateway.helpers import ingest_all, sdk, wait_policy

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _log_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url(f"{base}/")


def _percentile_disc(values: list[int], fraction: float) -> int:
    """The first value at or past ``fraction`` of the sorted values (what Postgres' percentile_disc returns)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def test_imported_usage_counts_its_requests(page: Any, live_server: Any, tmp_path: Path) -> None:
    """Three usage rows of 50, 400 and 30 requests are 480 requests, not 3, in the report and the overview."""
    base = live_server.url
    people = people_make()
    tenant = people.tenant
    day = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    csv_file = tmp_path / "usage.csv"
    csv_file.write_text(
        "start_time,model,input_tokens,output_tokens,num_model_requests,amount.value\n"
        + "".join(
            f"{int((day + dt.timedelta(hours=i)).timestamp())},gpt-4o-mini,{1000 * n},{100 * n},{n},0.01\n"
            for i, n in enumerate((50, 400, 30))
        )
    )
    _log_in(page, base, people.owner.username)
    page.goto(f"{base}/reports/import/")
    page.select_option("#id_project", str(tenant.project.pk))
    page.set_input_files("#id_file", str(csv_file))
    page.click("button.primary")
    page.wait_for_url("**/reports/?**")
    assert "480 requests" in page.inner_text("main")
    assert sum(LedgerEntry.objects.filter(source=Source.IMPORTED).values_list("request_count", flat=True)) == 480

    # The overview for this month counts them too, and its latency figures leave them out (none was timed).
    today = timezone.localdate()
    page.goto(f"{base}/overview/?scope=project:{tenant.project.slug}&date_from={day:%Y-%m-%d}&date_to={today}")
    totals = page.inner_text(".totals")
    assert "480 requests" in totals
    assert page.inner_text("[data-figure=latency-p50]") == "—"
    assert page.inner_text("[data-figure=streamed]") == "0"


def test_a_shadowed_rule_gets_a_warning(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    slug = people.tenant.project.slug
    _log_in(page, base, people.owner.username)

    def add_rule(name: str, models: str, features: str) -> None:
        page.goto(f"{base}/projects/{slug}/routing/")
        page.click("summary:has-text('Add a rule')")
        page.fill("#id_name", name)
        page.fill("#id_match_models", models)
        page.fill("#id_match_features", features)
        page.fill("#id_primaries", "gpt-4o-mini")
        page.click("button:has-text('Add rule')")
        page.wait_for_url(f"{base}/projects/{slug}/routing/")

    add_rule("All gpt-4o to mini", "gpt-4o", "")
    assert page.locator("[data-overlap]").count() == 0
    add_rule("Search on gpt-4o to mini", "gpt-4o", "search")
    first, second = RoutingRule.objects.filter(project=people.tenant.project).order_by("position")
    message = page.inner_text(".messages")
    assert "Never reached" in message and f"id {first.pk}" in message
    warning = page.locator("[data-overlap=shadowed]")
    assert warning.count() == 1 and "#1" in warning.inner_text()
    # Positions and ids side by side; the move buttons look and are enabled.
    row = page.locator("table.data tbody tr").nth(1)
    assert f"id {second.pk}" in row.inner_text()
    assert row.locator("button:has-text('Up')").is_enabled()
    shot(page, "routing-warning")

    # Moving the narrow rule up clears the warning: now it only narrows traffic the wide rule still gets.
    row.locator("button:has-text('Up')").click()
    page.wait_for_url(f"{base}/projects/{slug}/routing/")
    assert page.locator("[data-overlap=shadowed]").count() == 0


def test_lead_edits_then_deletes_a_budget(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    tenant = people.tenant
    lead = member_make(tenant, Role.TEAM_LEAD, team=tenant.team)
    budget = budget_create(
        organization=tenant.org, name="Support bot", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal(25), mode="soft",
    )  # fmt: skip
    _log_in(page, base, lead.username)
    page.goto(f"{base}/budgets/{budget.pk}/")
    assert f"Applies to Project: {tenant.project.slug}" in page.inner_text("#applies-to")
    page.click("a:has-text('Edit')")
    page.wait_for_url(f"{base}/budgets/{budget.pk}/edit/")
    assert page.input_value("#id_amount_usd") == "25.0000"
    # Only the scope's own fields show: a project budget's project, not a team, key, feature or end user.
    assert page.is_visible("#id_project") and not page.is_visible("#id_team") and not page.is_visible("#id_feature")
    page.select_option("#id_scope", "feature")
    assert page.is_visible("#id_feature") and page.is_visible("#id_project") and not page.is_visible("#id_api_key")
    page.select_option("#id_scope", "project")
    assert not page.is_visible("#id_feature")
    page.fill("#id_name", "Support bot, raised")
    page.fill("#id_amount_usd", "40")
    page.select_option("#id_mode", "hard")
    page.fill("#id_alert_thresholds", "80, 100")
    shot(page, "budget-edit")
    page.click("button:has-text('Save budget')")
    page.wait_for_url(f"{base}/budgets/{budget.pk}/")
    budget.refresh_from_db()
    assert (budget.name, budget.amount_usd, budget.mode, budget.alert_thresholds) == (
        "Support bot, raised",
        Decimal(40),
        "hard",
        [80, 100],
    )
    assert "saved" in page.inner_text(".messages")

    # A lead cannot widen their budget to the whole organisation: the edit is refused, nothing changes.
    page.goto(f"{base}/budgets/{budget.pk}/edit/")
    page.select_option("#id_scope", "organization")
    response_status: list[int] = []
    page.on("response", lambda r: r.request.method == "POST" and response_status.append(r.status))
    page.click("button:has-text('Save budget')")
    page.wait_for_load_state("load")
    assert response_status and response_status[0] == 403
    budget.refresh_from_db()
    assert budget.scope == BudgetScope.PROJECT

    page.goto(f"{base}/budgets/{budget.pk}/edit/")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Delete budget')")
    page.wait_for_url(f"{base}/budgets/")
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert "deleted" in page.inner_text(".messages")
    actions = list(
        AuditEvent.objects.filter(object_type=ObjectType.BUDGET, object_id=str(budget.pk)).values_list(
            "action", "actor_id"
        )
    )
    assert [a for a, _ in actions].count("update") == 1 and [a for a, _ in actions].count("delete") == 1
    assert {actor for a, actor in actions if a in ("update", "delete")} == {lead.pk}


def test_overview_at_phone_width_reaches_every_link_without_sideways_scroll(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    tenant = people.tenant
    for i in range(6):
        entry_make(tenant, feature=f"a-rather-long-feature-name-{i}", end_user=f"someone-{i}@example.com",
                   latency_ms=100 + i, cost=Decimal("0.01"))  # fmt: skip
    rollups_refresh()
    _log_in(page, base, people.owner.username)
    url = f"{base}/overview/?scope=project:{tenant.project.slug}"
    page.goto(url)
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart') !== undefined")
    shot(page, "overview-1440")

    for width in (390, 768):
        page.set_viewport_size({"width": width, "height": 844})
        page.goto(url)
        page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart') !== undefined")
        links = page.locator("#nav-links a, #nav-links button")
        names = links.all_inner_texts()
        assert {"Projects", "Overview", "Ledger", "Budgets", "Alerts", "Reports", "Log out"} <= set(names)
        assert not links.first.is_visible()  # collapsed behind the menu button
        page.click(".nav-toggle")
        for i in range(links.count()):
            box = links.nth(i).bounding_box()
            assert links.nth(i).is_visible() and box is not None, names[i]
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (names[i], box)
        wide = page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= width, f"the page is {wide} px wide at {width} px"
        cards = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('.card, .totals')]"
            ".map(c => c.getBoundingClientRect().right))"
        )
        assert cards <= width
        if width == 390:
            page.click(".nav-toggle")  # closed again for the picture
            shot(page, "overview-390")
            page.click(".nav-toggle")
        # Following a link from the open menu works.
        page.click("#nav-links a:has-text('Ledger')")
        page.wait_for_url(f"{base}/ledger/")


def test_overview_latency_and_streams_equal_the_ledger(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    tenant = people.tenant
    now = timezone.now()
    latencies = [1, 2, 2, 3, 4, 5, 6, 8, 3, 1, 7, 2]
    for i, latency in enumerate(latencies):
        streamed = i in (3, 7)
        entry_make(tenant, created_at=now - dt.timedelta(minutes=i), latency_ms=latency, streamed=streamed,
                   ttft_ms=latency - 1 if streamed else None)  # fmt: skip
    # Imported usage has no latency and is not streamed; it must move neither figure.
    entry_make(tenant, created_at=now - dt.timedelta(hours=1), source=Source.IMPORTED, request_count=300,
               latency_ms=0, endpoint="imported")  # fmt: skip
    entry_make(people.other, latency_ms=900, streamed=True, ttft_ms=500)  # another organisation
    rollups_refresh()
    _log_in(page, base, people.owner.username)
    page.goto(f"{base}/overview/?scope=project:{tenant.project.slug}")

    rows = LedgerEntry.objects.filter(project=tenant.project, source=Source.GATEWAY)
    timed = list(rows.values_list("latency_ms", flat=True))
    ttfts = list(rows.filter(ttft_ms__isnull=False).values_list("ttft_ms", flat=True))
    shown = {name: page.inner_text(f"[data-figure={name}]") for name in
             ("latency-p50", "latency-p95", "latency-mean", "ttft-p50", "ttft-p95", "streamed")}  # fmt: skip
    assert shown == {
        "latency-p50": f"{_percentile_disc(timed, 0.5)} ms",
        "latency-p95": f"{_percentile_disc(timed, 0.95)} ms",
        "latency-mean": f"{sum(timed) / len(timed):,.0f} ms",
        "ttft-p50": f"{_percentile_disc(ttfts, 0.5)} ms",
        "ttft-p95": f"{_percentile_disc(ttfts, 0.95)} ms",
        "streamed": str(rows.filter(streamed=True).count()),
    }
    assert shown["latency-p95"] == "8 ms" and shown["streamed"] == "2"
    assert f"{len(latencies) + 300} requests" in page.inner_text(".totals")


def _burst(tenant: Tenant, *, project: Any, now: dt.datetime, n: int = 40, feature: str = "chat") -> None:
    for i in range(n):
        entry_make(tenant, project=project, created_at=now - dt.timedelta(seconds=20 * i + 5), feature=feature,
                   cost=Decimal("0.05"), prompt_tokens=2000, completion_tokens=500)  # fmt: skip


def test_a_new_projects_first_burst_raises_no_spike_alert(page: Any, live_server: Any) -> None:
    base = live_server.url
    people = people_make()
    tenant = people.tenant
    now = timezone.now()
    fresh = project_create(organization=tenant.org, name="Fresh", slug="fresh", team=tenant.team)
    project_set_default_provider(project=fresh, provider=tenant.provider)
    _burst(tenant, project=fresh, now=now)
    # The control: an established project (a day of steady, cheap traffic) that then bursts does alert.
    for hour in range(1, 25):
        for j in range(3):
            entry_make(tenant, created_at=now - dt.timedelta(hours=hour, minutes=20 + j), feature="chat",
                       cost=Decimal("0.001"), prompt_tokens=100, completion_tokens=20)  # fmt: skip
    rollups_refresh()
    _burst(tenant, project=tenant.project, now=now)
    anomalies_detect(now=now)

    spikes = Alert.objects.filter(kind=AlertKind.SPEND_ANOMALY)
    assert not spikes.filter(project=fresh).exists()
    assert spikes.filter(project=tenant.project).count() == 2  # the project and its one feature
    _log_in(page, base, people.owner.username)
    page.goto(f"{base}/alerts/")
    text = page.inner_text("main")
    assert f"project {tenant.project.slug}" in text and "project fresh" not in text


def test_a_blocking_hard_budget_raises_its_blocking_alert_once(
    page: Any, live_server: Any, gateway: str, upstream: str
) -> None:
    base = live_server.url
    tenant = tenant_make(upstream_url=upstream)
    budget = budget_create(organization=tenant.org, name="Tight", scope=BudgetScope.PROJECT,
                           project=tenant.project, amount_usd=Decimal("0.002"))  # fmt: skip
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    refused = 0
    for i in range(12):
        try:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"Count to three #{i}"}], max_tokens=50
            )
        except Exception as exc:  # noqa: BLE001 (the SDK's RateLimitError; its code is checked)
            assert getattr(exc, "code", None) == "insufficient_quota", exc
            refused += 1
    assert refused, "the budget never refused a request"
    ingest_all()
    for _ in range(3):  # the periodic check runs every minute; it must not say it again
        budgets_check_thresholds()
    blocking = Alert.objects.filter(kind=AlertKind.BUDGET_BLOCKING, budget=budget)
    assert blocking.count() == 1
    assert blocking.get().data["refused"] == refused

    _log_in(page, base, tenant.owner.username)
    page.goto(f"{base}/alerts/")
    assert page.locator("text=Budget 'Tight' is blocking requests").count() == 1
