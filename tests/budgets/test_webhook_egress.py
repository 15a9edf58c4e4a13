"""Alert webhooks obey the egress policy when delivered: no inward address, no redirect followed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from apps.budgets.models import AlertDelivery, ChannelKind, DeliveryStatus
from apps.budgets.services import alert_deliver, alert_raise, channel_create
from tests.egress_servers import Listener, inward_listener, redirector
from tests.factories import tenant_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def listener() -> Iterator[Listener]:
    with inward_listener() as server:
        yield server


def test_webhook_to_loopback_is_refused_when_delivered(listener: Listener, settings: Any) -> None:
    tenant = tenant_make()
    # Saved while loopback was allowed (or its name resolved elsewhere then): delivery checks again.
    channel_create(organization=tenant.org, name="inward", kind=ChannelKind.WEBHOOK, target=f"{listener.url}/hook")
    settings.COSTCONTROL_EGRESS_ALLOW = []
    alert, _ = alert_raise(organization_id=tenant.org.pk, kind="spend_anomaly", dedup_key="x", title="t", message="m")
    delivery = AlertDelivery.objects.select_related("alert", "channel").get(alert=alert)
    with pytest.raises(httpx2.ConnectError, match="loopback"):
        alert_deliver(delivery=delivery)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and "egress policy" in delivery.last_error
    assert listener.hits == []


def test_webhook_redirect_inward_is_not_followed(listener: Listener, settings: Any) -> None:
    tenant = tenant_make()
    with redirector(listener.url) as port:
        settings.COSTCONTROL_EGRESS_ALLOW = [f"localhost:{port}"]  # only the "public" endpoint is allowed
        channel_create(
            organization=tenant.org,
            name="bouncing",
            kind=ChannelKind.WEBHOOK,
            target=f"http://localhost:{port}/hook",
            secret="s",
        )
        alert, _ = alert_raise(
            organization_id=tenant.org.pk, kind="spend_anomaly", dedup_key="y", title="t", message="m"
        )
        delivery = AlertDelivery.objects.select_related("alert", "channel").get(alert=alert)
        with pytest.raises(RuntimeError, match="webhook answered 302"):
            alert_deliver(delivery=delivery)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and "302" in delivery.last_error
    assert listener.hits == [], "the redirect target must never be reached"
