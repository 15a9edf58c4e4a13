"""One provider whose secret no key decrypts does not stop the gateway's policy from refreshing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from cryptography.fernet import Fernet

from apps.keys.services import key_issue, key_revoke
from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from tests import live
from tests.factories import tenant_make
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.live

OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.fixture
def new_key_gateway(transactional_db: None, upstream: str) -> Iterator[str]:
    """A gateway that knows only the new encryption key (the old one was dropped too early)."""
    process, url = live.start_gateway(COSTCONTROL_ENCRYPTION_KEYS=NEW_KEY, GATEWAY_RETRIES="0")
    yield url
    process.stop()


def test_revocations_keep_arriving_past_an_undecryptable_provider(
    new_key_gateway: str, upstream: str, settings: Any
) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]
    tenant = tenant_make(upstream_url=upstream)
    wait_key_live(new_key_gateway, tenant.key.plaintext)
    # Another organisation's provider, written under the old key only.
    settings.FIELD_ENCRYPTION_KEYS = [OLD_KEY]
    other = tenant_make(upstream_url=upstream, name="stale-org")
    provider_create(organization=other.org, name="old", kind=ProviderKind.OPENAI, base_url=upstream, secret="sk-old")
    settings.FIELD_ENCRYPTION_KEYS = [NEW_KEY]

    # Changes made after it still reach the gateway: a new key works, a revoked one stops working.
    fresh = key_issue(project=tenant.project, name="issued later")
    wait_key_live(new_key_gateway, fresh.plaintext)
    messages = [{"role": "user", "content": "hi"}]
    assert sdk(new_key_gateway, fresh.plaintext).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    key_revoke(api_key=tenant.key.api_key)
    revoked_at = time.monotonic()

    def refused() -> bool:
        try:
            sdk(new_key_gateway, tenant.key.plaintext).models.list()
        except openai.AuthenticationError:
            return True
        return False

    live.wait_until(refused, timeout=5)
    print(f"revocation refused after {time.monotonic() - revoked_at:.3f} s")
    # The organisation whose providers cannot be decrypted is served by none of them, with a clear 404.
    with pytest.raises(openai.NotFoundError):
        sdk(new_key_gateway, other.key.plaintext).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
