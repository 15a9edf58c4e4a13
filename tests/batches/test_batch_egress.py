"""Batch backends obey the egress policy: the sync path and the provider's Batch/Files APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from apps.batches.models import Batch, BatchLine
from apps.batches.services import batch_run
from apps.providers.models import ProviderKind
from apps.providers.services import provider_update
from tests.egress_servers import Listener, inward_listener, redirector
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


@pytest.fixture
def listener() -> Iterator[Listener]:
    with inward_listener() as server:
        yield server


def _submit(gateway: str, tenant: Tenant) -> str:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    lines = [json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
             for i in range(3)]  # fmt: skip
    uploaded = client.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id


def test_sync_lines_to_an_inward_provider_fail_without_reaching_it(
    gateway: str, tenant: Tenant, listener: Listener, settings: Any
) -> None:
    # The provider was saved pointing at loopback while that was allowed; the operator then removed it.
    provider_update(provider=tenant.provider, name="sim", base_url=f"{listener.url}/v1", secret="sk-x", is_active=True)
    tenant.provider.kind = ProviderKind.OPENAI_COMPATIBLE  # no Batch API: our sync path sends each line
    tenant.provider.save(update_fields=["kind"])
    batch_id = _submit(gateway, tenant)
    settings.COSTCONTROL_EGRESS_ALLOW = []
    batch_run(batch_id=batch_id, worker="test")
    lines = list(BatchLine.objects.filter(batch_id=batch_id))
    assert len(lines) == 3 and all(line.status_code == 502 for line in lines)
    assert all("egress policy" in line.response["error"]["message"] for line in lines)
    assert listener.hits == []


def test_provider_batch_api_redirecting_inward_is_not_followed(
    gateway: str, tenant: Tenant, listener: Listener, settings: Any
) -> None:
    with redirector(listener.url) as port:
        provider_update(provider=tenant.provider, name="sim", base_url=f"http://localhost:{port}/v1", secret="sk-x",
                        is_active=True)  # fmt: skip
        batch_id = _submit(gateway, tenant)
        assert Batch.objects.get(pk=batch_id).backend == "provider"  # the simulator kind has a Batch API
        settings.COSTCONTROL_EGRESS_ALLOW = [f"localhost:{port}"]
        with pytest.raises(openai.APIStatusError) as answered:  # the SDK sees the 302 itself, unfollowed
            batch_run(batch_id=batch_id, worker="test")
        assert answered.value.status_code == 302
    assert listener.hits == []
    assert Batch.objects.get(pk=batch_id).provider_batch_id == ""
