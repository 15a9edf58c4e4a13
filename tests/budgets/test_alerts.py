"""Spend alerts: thresholds, spend-rate spikes, delivery to signed webhooks and Slack."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest
from django.utils import timezone

from apps.budgets.models import Alert, AlertDelivery, AlertKind, BudgetScope, ChannelKind, DeliveryStatus
from apps.budgets.services import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    alert_deliver,
    anomalies_detect,
    budget_create,
    budgets_check_thresholds,
    channel_create,
    webhook_signature,
)
from apps.ledger.models import LedgerEntry
from apps.ledger.services import rollups_refresh
from tests.factories import Tenant, tenant_make

SECRET = "whsec-test-secret"


class _Capture(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A real HTTP server on loopback that records what our webhooks send."""
    _Capture.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _Capture.received
    server.shutdown()


def _row(tenant: Tenant, when: dt.datetime, cost: str, tokens: int = 100, feature: str = "chat") -> LedgerEntry:
    return LedgerEntry.objects.create(
        request_id=uuid.uuid4().hex, created_at=when, organization=tenant.org, project=tenant.project,
        api_key=tenant.key.api_key, provider=tenant.provider, endpoint="chat.completions", feature=feature,
        requested_model="gpt-4o", served_model="gpt-4o", prompt_tokens=tokens, completion_tokens=tokens // 2,
        cost=Decimal(cost), counterfactual_cost=Decimal(cost), latency_ms=5, status_code=200,
    )  # fmt: skip


def _deliver_all() -> None:
    for delivery in AlertDelivery.objects.select_related("alert", "channel"):
        alert_deliver(delivery=delivery)


@pytest.mark.django_db
def test_spend_spike_alerts_once_per_channel_with_verifiable_signature(receiver) -> None:  # type: ignore[no-untyped-def]
    url, received = receiver
    tenant = tenant_make()
    channel_create(organization=tenant.org, name="hooks", kind=ChannelKind.WEBHOOK, target=f"{url}/hook", secret=SECRET)
    channel_create(organization=tenant.org, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    now = timezone.now()
    # Baseline: a steady $0.06/hour for the past day.
    for hours_ago in range(2, 26):
        for minute in (5, 25, 45):
            _row(tenant, now - dt.timedelta(hours=hours_ago, minutes=-minute), "0.02")
    rollups_refresh()
    assert anomalies_detect(now=now) == 0, "steady traffic is not an anomaly"

    # A spike: $0.50 in the last ten minutes (~$3/hour, 50x the baseline).
    for minute in range(10):
        _row(tenant, now - dt.timedelta(minutes=minute), "0.05", tokens=5000)
    assert anomalies_detect(now=now) >= 1
    assert anomalies_detect(now=now) == 0, "the same spike is not alerted twice"
    alert = Alert.objects.get(kind=AlertKind.SPEND_ANOMALY, data__feature="")
    assert tenant.project.slug in alert.title and alert.link.startswith("/ledger/?project=")

    _deliver_all()
    _deliver_all()  # already sent: nothing is sent again
    project_alerts = [r for r in received if json.loads(r[2]).get("id") == alert.id or alert.title in r[2].decode()]
    by_path = sorted(path for path, _headers, _body in project_alerts)
    assert by_path == ["/hook", "/slack"], "exactly one delivery per channel"
    _path, headers, body = next(r for r in project_alerts if r[0] == "/hook")
    expected = webhook_signature(secret=SECRET, timestamp=headers[TIMESTAMP_HEADER.lower()], body=body)
    assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
    assert json.loads(body)["kind"] == "spend_anomaly"
    assert AlertDelivery.objects.filter(alert=alert, status=DeliveryStatus.SENT).count() == 2


@pytest.mark.django_db
def test_budget_thresholds_alert_once_each() -> None:
    tenant = tenant_make()
    budget = budget_create(
        organization=tenant.org, name="monthly", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal("1.00"), alert_thresholds=[50, 80, 100],
    )  # fmt: skip
    now = timezone.now()
    _row(tenant, now, "0.55")
    assert budgets_check_thresholds() == 1
    _row(tenant, now, "0.30")
    assert budgets_check_thresholds() == 1
    assert budgets_check_thresholds() == 0
    assert sorted(a.data["threshold"] for a in Alert.objects.filter(budget=budget)) == [50, 80]


@pytest.mark.django_db
def test_failed_delivery_is_recorded_and_raises_for_retry() -> None:
    tenant = tenant_make()
    channel_create(organization=tenant.org, name="dead", kind=ChannelKind.WEBHOOK, target="http://127.0.0.1:9/nope")
    budget = budget_create(
        organization=tenant.org, name="b", scope=BudgetScope.ORGANIZATION, amount_usd=Decimal("0.01"),
        alert_thresholds=[100],
    )  # fmt: skip
    _row(tenant, timezone.now(), "0.02")
    budgets_check_thresholds()
    delivery = AlertDelivery.objects.get(alert__budget=budget)
    with pytest.raises(httpx2.ConnectError):
        alert_deliver(delivery=delivery)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1 and delivery.last_error


@pytest.mark.django_db(transaction=True)
def test_spike_in_live_gateway_traffic_alerts_once_per_channel(receiver, gateway: str, tenant: Tenant) -> None:  # type: ignore[no-untyped-def]
    """The spike is real traffic: SDK → gateway → simulated upstream → ledger stream → ingest."""
    from tests.gateway.helpers import ingest_all, sdk, wait_key_live

    url, received = receiver
    channel_create(organization=tenant.org, name="hooks", kind=ChannelKind.WEBHOOK, target=f"{url}/hook", secret=SECRET)
    channel_create(organization=tenant.org, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    now = timezone.now()
    for hours_ago in range(2, 26):  # the baseline has to be in the past, so it is written as ledger rows
        for minute in (5, 25, 45):
            _row(tenant, now - dt.timedelta(hours=hours_ago, minutes=-minute), "0.002", feature="")
    rollups_refresh()
    assert anomalies_detect(now=now) == 0

    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    long_prompt = "Summarise this contract clause by clause. " * 250  # ~2,000 tokens of gpt-4o input each
    for i in range(40):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"{i} {long_prompt}"}])
    ingest_all()
    spent = sum(r.cost for r in LedgerEntry.objects.filter(project=tenant.project, created_at__gte=now))
    assert spent > Decimal("0.1"), "the spike is real, priced traffic"

    detected_at = timezone.now()
    assert anomalies_detect(now=detected_at) >= 1
    assert anomalies_detect(now=detected_at) == 0, "the same spike is not alerted twice"
    alert = Alert.objects.get(kind=AlertKind.SPEND_ANOMALY, project=tenant.project, data__feature="")
    _deliver_all()
    _deliver_all()
    deliveries = [r for r in received if alert.title in r[2].decode() or json.loads(r[2]).get("id") == alert.id]
    assert sorted(path for path, _h, _b in deliveries) == ["/hook", "/slack"]
    _path, headers, body = next(r for r in deliveries if r[0] == "/hook")
    expected = webhook_signature(secret=SECRET, timestamp=headers[TIMESTAMP_HEADER.lower()], body=body)
    assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
