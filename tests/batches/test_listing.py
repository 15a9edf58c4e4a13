"""GET /v1/batches and /v1/files page as OpenAI's do, so the SDK's auto-pagination sees every object.

Before, both lists were the newest 100 with ``has_more: false``: a project's 101st batch could not be
listed through the API at all.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from apps.batches.models import Batch, BatchFile
from tests.batches.helpers import CHAT_LINE, other_tenant, raw_request
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.django_db(transaction=True)

LINE = CHAT_LINE


def _get(gateway: str, key: str, path: str) -> tuple[int, dict[str, Any]]:
    return raw_request(gateway, key, "GET", path)


def _batches(gateway: str, key: str, n: int) -> list[str]:
    client = sdk(gateway, key)
    file_id = client.files.create(file=("in.jsonl", json.dumps(LINE).encode()), purpose="batch").id
    return [
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(n)
    ]


def test_the_sdk_pages_through_every_batch_newest_first(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    made = _batches(gateway, tenant.key.plaintext, 25)
    client = sdk(gateway, tenant.key.plaintext)
    newest_first = list(
        Batch.objects.filter(project=tenant.project).order_by("-created_at", "-pk").values_list("pk", flat=True)
    )
    assert sorted(newest_first) == sorted(made)
    first = client.batches.list(limit=10)
    assert [b.id for b in first.data] == newest_first[:10] and first.has_more
    assert [b.id for b in client.batches.list(limit=10)] == newest_first  # auto-pagination: 10, 10, 5
    assert [b.id for b in client.batches.list()] == newest_first  # 20 a page by default
    last = client.batches.list(limit=10, after=newest_first[19])
    assert [b.id for b in last.data] == newest_first[20:] and not last.has_more


def test_files_page_in_either_order_and_by_purpose(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    for n in range(5):
        client.files.create(file=(f"in{n}.jsonl", json.dumps(LINE).encode()), purpose="batch")
    oldest_first = list(
        BatchFile.objects.filter(project=tenant.project).order_by("created_at", "pk").values_list("pk", flat=True)
    )
    assert [f.id for f in client.files.list(limit=2, order="asc")] == oldest_first
    assert [f.id for f in client.files.list(limit=2)] == oldest_first[::-1]
    assert [f.id for f in client.files.list(purpose="batch")] == oldest_first[::-1]
    assert client.files.list(purpose="fine-tune").data == []


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=-1", "limit=abc", "limit=1e2", "limit=" + "9" * 5000,
                                   "order=sideways", "after=batch_nope", "after=" + quote("batch_\x00"),
                                   "after=" + "b" * 5000])  # fmt: skip
def test_garbage_list_queries_are_400s_in_openais_shape(gateway: str, tenant: Tenant, query: str) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    status, data = _get(gateway, tenant.key.plaintext, f"/batches?{query}")
    assert status == 400, data
    assert data["error"]["param"] == query.split("=")[0] and data["error"]["type"] == "invalid_request_error"
    assert "\x00" not in data["error"]["message"] and len(data["error"]["message"]) < 200


def test_another_projects_id_is_no_cursor_and_its_objects_never_listed(
    gateway: str, tenant: Tenant, upstream: str
) -> None:
    other = other_tenant(gateway, tenant, upstream)
    mine, theirs = _batches(gateway, tenant.key.plaintext, 2), _batches(gateway, other.key.plaintext, 2)
    # Their batch as a cursor in my list: refused as if it did not exist, nothing of theirs shown.
    status, data = _get(gateway, tenant.key.plaintext, f"/batches?after={theirs[0]}")
    assert status == 400 and data["error"]["param"] == "after"
    assert sorted(b.id for b in sdk(gateway, tenant.key.plaintext).batches.list(limit=1)) == sorted(mine)
    their_file = BatchFile.objects.filter(project=other.project).values_list("pk", flat=True).first()
    status, data = _get(gateway, tenant.key.plaintext, f"/files?after={their_file}")
    assert status == 400 and data["error"]["param"] == "after"
    assert {f.id for f in sdk(gateway, tenant.key.plaintext).files.list()}.isdisjoint(
        BatchFile.objects.filter(project=other.project).values_list("pk", flat=True)
    )
