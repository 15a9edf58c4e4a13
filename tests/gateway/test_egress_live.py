"""SSRF through the gateway: tenant-set provider URLs reach only what the egress policy admits.

The gateway here runs with loopback OFF the allow-list: only two host:port names are allowed (the
simulated upstream as ``localhost:PORT``, and a "public-looking" upstream that redirects inward).
A loopback listener stands for the metadata service; it must never receive a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from urllib.parse import urlsplit

import openai
import pytest

from apps.providers.models import ProviderKind
from apps.providers.services import price_set, provider_create, provider_update
from tests import live
from tests.egress_servers import Listener, inward_listener, redirector
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import sdk, wait_policy

pytestmark = pytest.mark.live


@pytest.fixture
def listener() -> Iterator[Listener]:
    with inward_listener() as server:
        yield server


@pytest.fixture
def bouncer(listener: Listener) -> Iterator[int]:
    with redirector(listener.url) as port:
        yield port


@pytest.fixture
def strict_gateway(transactional_db: None, upstream: str, bouncer: int) -> Iterator[str]:
    """A gateway whose allow-list has no loopback range: just two port-specific names."""
    sim_port = urlsplit(upstream).port
    process, url = live.start_gateway(
        COSTCONTROL_EGRESS_ALLOW=f"localhost:{sim_port},localhost:{bouncer}", GATEWAY_RETRIES="0"
    )
    yield url
    process.stop()


def _provider(tenant: Tenant, name: str, base_url: str, model: str) -> None:
    provider = provider_create(
        organization=tenant.org,
        name=name,
        kind=ProviderKind.OPENAI_COMPATIBLE,
        base_url=base_url,
        secret="sk-org-secret",
        seed_catalog=False,
    )
    price_set(
        provider=provider,
        model=model,
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(1),
        effective_from=date(2024, 1, 1),
    )


def test_loopback_and_redirects_inward_are_refused_while_an_allowed_name_works(
    strict_gateway: str, upstream: str, listener: Listener, bouncer: int
) -> None:
    sim = upstream.replace("127.0.0.1", "localhost")
    tenant = tenant_make(upstream_url=sim)
    _provider(tenant, "inward", f"{listener.url}/v1", "inward-model")
    _provider(tenant, "bouncer", f"http://localhost:{bouncer}/v1", "bounce-model")
    wait_policy(strict_gateway, tenant.key.plaintext)
    client = sdk(strict_gateway, tenant.key.plaintext)
    messages = [{"role": "user", "content": "hello"}]

    # The separately allowed name reaches the simulated upstream.
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert answer.choices[0].message.content

    # A provider on loopback is refused before any connection is made, streamed or not.
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="inward-model", messages=messages, stream=stream)  # type: ignore[call-overload]
        assert refused.value.status_code == 502
        assert "loopback" in refused.value.message and "egress policy" in refused.value.message

    # An allowed upstream that redirects inward: the redirect is not followed, its target never reached.
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as bounced:
            client.chat.completions.create(model="bounce-model", messages=messages, stream=stream)  # type: ignore[call-overload]
        assert bounced.value.status_code == 502 and "redirect" in bounced.value.message
        assert "internal-only" not in str(bounced.value.body)

    assert listener.hits == [], "the inward listener must never be reached"


def test_another_tenant_cannot_point_a_provider_inward_through_the_shared_gateway(
    strict_gateway: str, upstream: str, listener: Listener
) -> None:
    """A hostile tenant's provider URL cannot reach what the gateway itself can (e.g. the other tenant's
    simulated upstream is allowed only by its name and port; loopback by address is not)."""
    sim = upstream.replace("127.0.0.1", "localhost")
    victim, hostile = tenant_make(upstream_url=sim), tenant_make(upstream_url=sim)
    # The hostile tenant re-points its own provider at the address of the allowed upstream.
    provider_update(provider=hostile.provider, name="sim", base_url=upstream, secret="sk-x", is_active=True)
    wait_policy(strict_gateway, hostile.key.plaintext)
    messages = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(strict_gateway, hostile.key.plaintext).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert refused.value.status_code == 502 and "loopback" in refused.value.message
    # The victim, on the allowed name, is served by the same gateway.
    wait_policy(strict_gateway, victim.key.plaintext)
    assert sdk(strict_gateway, victim.key.plaintext).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert listener.hits == []
