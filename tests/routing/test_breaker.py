"""The circuit breaker across two gateway processes: opens after N failures, half-opens, closes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from apps.providers.models import Provider, ProviderKind
from apps.providers.services import provider_create, provider_update
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_policy
from tests.routing.helpers import ask, rule_make

pytestmark = pytest.mark.django_db(transaction=True)

COOLDOWN = 1.5


@pytest.fixture(scope="module")
def gateways(django_db_setup: None, upstream: str) -> Iterator[tuple[str, str]]:
    env = {
        "GATEWAY_RETRIES": "0",
        "GATEWAY_BREAKER_FAILURES": "3",
        "GATEWAY_BREAKER_WINDOW_SECONDS": "30",
        "GATEWAY_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
    }
    first, first_url = live.start_gateway(**env)
    second, second_url = live.start_gateway(**env)
    yield first_url, second_url
    first.stop()
    second.stop()


def _route(gateway: str, tenant: Tenant) -> tuple[str, str]:
    raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ask("hello")
    )
    return raw.parse().model, raw.headers["x-route"]


def test_breaker_opens_half_opens_and_closes(gateways: tuple[str, str], tenant: Tenant, upstream: str) -> None:
    first, second = gateways
    flaky: Provider = provider_create(
        organization=tenant.org,
        name="flaky",
        kind=ProviderKind.OPENAI_COMPATIBLE,
        base_url="http://127.0.0.1:9/v1",  # nothing listens: connection refused
        secret="sk-simulated",
        seed_catalog=True,
    )
    rule = rule_make(tenant, name="flaky first", primaries="gpt-4o-mini @ flaky", fallbacks="gpt-4o-mini @ sim")
    wait_policy(first, tenant.key.plaintext)
    wait_policy(second, tenant.key.plaintext)
    failed = f"route:{rule.id}:route;failed:gpt-4o-mini@flaky"

    # Closed: each request tries flaky, fails, and falls back. Failures from both processes add up.
    assert _route(first, tenant) == ("gpt-4o-mini", f"{failed}(unreachable)")
    assert _route(second, tenant) == ("gpt-4o-mini", f"{failed}(unreachable)")
    assert _route(first, tenant) == ("gpt-4o-mini", f"{failed}(unreachable)")

    # Open (third failure): both processes skip flaky without trying it.
    def skipped(gateway: str) -> bool:
        return _route(gateway, tenant)[1] == f"{failed}(circuit-open)"

    live.wait_until(lambda: skipped(first) and skipped(second), timeout=3)

    # The provider recovers while the circuit is open; requests still skip it until the cool-down ends.
    provider_update(provider=flaky, name="flaky", base_url=upstream, secret="sk-simulated", is_active=True)
    wait_policy(first, tenant.key.plaintext)
    wait_policy(second, tenant.key.plaintext)
    assert skipped(first)

    # Half-open after the cool-down: one probe goes through, succeeds, and closes the circuit everywhere.
    time.sleep(COOLDOWN + 0.1)
    assert _route(second, tenant) == ("gpt-4o-mini", f"route:{rule.id}:route")
    live.wait_until(lambda: _route(first, tenant)[1] == f"route:{rule.id}:route", timeout=3)


def test_a_failed_probe_opens_the_circuit_again(gateways: tuple[str, str], tenant: Tenant) -> None:
    first, _second = gateways
    provider_create(
        organization=tenant.org,
        name="down",
        kind=ProviderKind.OPENAI_COMPATIBLE,
        base_url="http://127.0.0.1:9/v1",
        secret="sk-simulated",
        seed_catalog=True,
    )
    rule = rule_make(tenant, name="down first", primaries="gpt-4.1 @ down", fallbacks="gpt-4.1 @ sim")
    wait_policy(first, tenant.key.plaintext)
    failed = f"route:{rule.id}:route;failed:gpt-4.1@down"
    for _ in range(3):
        _route(first, tenant)
    assert _route(first, tenant)[1] == f"{failed}(circuit-open)"
    time.sleep(COOLDOWN + 0.1)
    assert _route(first, tenant)[1] == f"{failed}(unreachable)"  # the probe
    assert _route(first, tenant)[1] == f"{failed}(circuit-open)"  # open again, for another cool-down
