"""JSON that Python reads and Postgres cannot store, in batch bodies, input lines and metadata: a clear
error in OpenAI's shape, never a 500 (found by the fuzzer's SDK-field property, ``metadata: {"": Infinity}``).

Python's ``json`` reads ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON, and Postgres's ``jsonb``
refuses them and the character ``\\u0000``; a ``text`` column refuses NUL too.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from apps.batches.models import Batch
from tests.batches.helpers import CHAT_LINE, other_tenant, raw_request
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.django_db(transaction=True)

LINE = CHAT_LINE


def _post(gateway: str, key: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    return raw_request(gateway, key, "POST", path, body)


def _upload(gateway: str, key: str, content: str) -> str:
    return sdk(gateway, key).files.create(file=("in.jsonl", content.encode()), purpose="batch").id


@pytest.mark.parametrize(
    "body",
    [
        # Not JSON (RFC 8259 has no such numbers), though Python's json module reads them.
        b'{"input_file_id": "FILE", "endpoint": "/v1/chat/completions", "metadata": {"a": NaN}}',
        b'{"input_file_id": "FILE", "endpoint": "/v1/chat/completions", "metadata": {"a": Infinity}}',
        b'{"input_file_id": "FILE", "endpoint": "/v1/chat/completions", "completion_window": -Infinity}',
    ],
)
def test_a_batch_body_with_nan_or_infinity_is_a_400(gateway: str, tenant: Tenant, body: bytes) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    file_id = _upload(gateway, tenant.key.plaintext, json.dumps(LINE))
    status, data = _post(gateway, tenant.key.plaintext, "/batches", body.replace(b"FILE", file_id.encode()))
    assert status == 400, data
    assert "JSON" in data["error"]["message"]
    assert not Batch.objects.filter(project=tenant.project).exists()


@pytest.mark.parametrize(
    "metadata",
    [
        {"a": "\x00"},  # Postgres's jsonb cannot hold \u0000
        {"\x00": "a"},
        {"a": {"nested": "object"}},
        {"a": 1},
        {"a": ["list"]},
        {str(n): "v" for n in range(17)},  # OpenAI: at most 16 pairs
        {"k" * 65: "v"},  # keys up to 64 characters
        {"a": "v" * 513},  # values up to 512
        ["not", "an", "object"],
    ],
)
def test_batch_metadata_is_held_to_openais_rules(gateway: str, tenant: Tenant, metadata: Any) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    file_id = _upload(gateway, tenant.key.plaintext, json.dumps(LINE))
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "metadata": metadata}  # fmt: skip
    status, data = _post(gateway, tenant.key.plaintext, "/batches", json.dumps(body).encode())
    assert status == 400 and data["error"]["param"] == "metadata", data
    assert "\x00" not in data["error"]["message"] and len(data["error"]["message"]) < 300
    assert not Batch.objects.filter(project=tenant.project).exists()


def test_metadata_within_the_rules_is_kept_as_sent(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    file_id = _upload(gateway, tenant.key.plaintext, json.dumps(LINE))
    metadata = {**{f"k{n}": "v" * 512 for n in range(15)}, "k" * 64: "é ✓"}
    batch = sdk(gateway, tenant.key.plaintext).batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    assert batch.metadata == metadata
    assert Batch.objects.get(pk=batch.id).metadata == metadata


@pytest.mark.parametrize(
    "line",
    [
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        '"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}}',
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        '"messages": [{"role": "user", "content": "hi"}], "x_extra": Infinity}}',
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        '"messages": [{"role": "user", "content": "nul \\u0000 here"}]}}',
        '{"custom_id": "a\\u0000b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
        '"gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}',
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        '"messages": [{"role": "user", "content": "hi"}], "metadata": {"\\u0000": "x"}}}',
        # A lone surrogate: Python reads it, UTF-8 (and so Postgres) cannot hold it.
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
        '"messages": [{"role": "user", "content": "\\ud800"}]}}',
        # Longer than the custom_id column.
        '{"custom_id": "' + "c" * 513 + '", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
        '"gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}',
    ],
)
def test_an_input_line_postgres_cannot_store_fails_the_batch_with_its_line_number(
    gateway: str, tenant: Tenant, line: str
) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    good = json.dumps({**LINE, "custom_id": "first"})
    file_id = _upload(gateway, tenant.key.plaintext, f"{good}\n{line}\n")
    batch = sdk(gateway, tenant.key.plaintext).batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [(error.line, error.code) for error in batch.errors.data] == [(2, "invalid_request")]
    assert "\x00" not in (batch.errors.data[0].message or "")


def test_a_line_separator_inside_a_string_does_not_split_the_line(gateway: str, tenant: Tenant) -> None:
    """JSONL lines end at \\n; U+2028 and U+0085 are characters a JSON string may hold as they are."""
    wait_key_live(gateway, tenant.key.plaintext)
    line = dict(LINE, body={**LINE["body"], "messages": [{"role": "user", "content": "one\u2028two\x85three"}]})
    file_id = _upload(gateway, tenant.key.plaintext, json.dumps(line, ensure_ascii=False) + "\r\n")
    batch = sdk(gateway, tenant.key.plaintext).batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status != "failed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.total == 1


def test_another_tenant_cannot_use_a_hostile_batch_to_reach_this_ones(
    gateway: str, tenant: Tenant, upstream: str
) -> None:
    """A refused hostile batch leaves nothing behind that another project's key could read."""
    other = other_tenant(gateway, tenant, upstream)
    file_id = _upload(gateway, tenant.key.plaintext, json.dumps(LINE))
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "metadata": {"a": "\x00"}}
    assert _post(gateway, tenant.key.plaintext, "/batches", json.dumps(body).encode())[0] == 400
    # The other project's key sees neither the file nor any batch, and cannot start one from the file.
    assert sdk(gateway, other.key.plaintext).batches.list().data == []
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    status, data = _post(gateway, other.key.plaintext, "/batches", json.dumps(body).encode())
    assert status == 400 and data["error"]["param"] == "input_file_id"


def test_a_filename_with_control_characters_is_stored_without_them(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    parts = urlsplit(gateway)
    boundary = "b0undary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in\x00put\x1b[31m.jsonl"\r\n\r\n'
        ).encode()
        + json.dumps(LINE).encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {tenant.key.plaintext}",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}  # fmt: skip
    conn.request("POST", parts.path + "/files", body=multipart, headers=headers)
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read())
    conn.close()
    assert status == 200, data
    assert data["filename"] == "input[31m.jsonl"
