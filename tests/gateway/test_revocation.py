"""Key revocation reaches every gateway process within a second."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from apps.keys.services import key_revoke
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.live


@pytest.fixture
def second_gateway(gateway: str) -> Iterator[str]:
    # A long poll interval: only the pub/sub announcement can make this fast.
    process, url = live.start_gateway(GATEWAY_POLICY_POLL_SECONDS="30")
    yield url
    process.stop()


def test_revocation_visible_to_two_processes_within_one_second(
    gateway: str, second_gateway: str, tenant: Tenant
) -> None:
    clients = [sdk(url, tenant.key.plaintext) for url in (gateway, second_gateway)]
    for url in (gateway, second_gateway):
        wait_key_live(url, tenant.key.plaintext)
    for client in clients:
        assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    revoked_at = time.monotonic()
    key_revoke(api_key=tenant.key.api_key)
    refused_after = []
    for client in clients:
        while True:
            try:
                client.models.list()
            except openai.AuthenticationError:
                refused_after.append(time.monotonic() - revoked_at)
                break
            assert time.monotonic() - revoked_at < 1.0, "a gateway still accepted the key after 1 s"
            time.sleep(0.01)
    assert max(refused_after) < 1.0
