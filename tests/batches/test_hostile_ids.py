"""Ids in /v1/files and /v1/batches URLs and bodies that none of ours can be: 404 in OpenAI's shape, never a 500."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.batches.helpers import raw_request
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import wait_key_live

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE_IDS = ["file-%00x", "batch_%00", "a" * 5000, "%FF%FE", "..%2F..%2Fetc"]


@pytest.mark.parametrize("object_id", HOSTILE_IDS)
def test_hostile_ids_in_urls_are_404s_in_openais_shape(gateway: str, tenant: Tenant, object_id: str) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    for method, path in (
        ("GET", f"/files/{object_id}"),
        ("GET", f"/files/{object_id}/content"),
        ("DELETE", f"/files/{object_id}"),
        ("GET", f"/batches/{object_id}"),
        ("POST", f"/batches/{object_id}/cancel"),
    ):
        status, data = raw_request(gateway, tenant.key.plaintext, method, path)
        assert status == 404, (method, path, status, data)
        assert set(data["error"]) >= {"message", "type", "param", "code"}
        assert "\x00" not in data["error"]["message"] and len(data["error"]["message"]) < 200


def test_a_hostile_input_file_id_is_a_400_and_another_projects_file_stays_hidden(
    gateway: str, tenant: Tenant, upstream: str
) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    for input_file_id in ("file-\x00x", "f" * 5000, 12345):
        body = json.dumps(
            {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        ).encode()
        status, data = raw_request(gateway, tenant.key.plaintext, "POST", "/batches", body)
        assert status == 400 and data["error"]["param"] == "input_file_id", (input_file_id, status, data)

    other = tenant_make(upstream_url=upstream)
    wait_key_live(gateway, other.key.plaintext)
    upload = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n'
    conn = http.client.HTTPConnection(urlsplit(gateway).hostname, urlsplit(gateway).port, timeout=10)
    boundary = "xyz"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
        ).encode()
        + upload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn.request(
        "POST",
        urlsplit(gateway).path + "/files",
        body=multipart,
        headers={
            "Authorization": f"Bearer {other.key.plaintext}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    file_id = json.loads(conn.getresponse().read())["id"]
    status, data = raw_request(gateway, tenant.key.plaintext, "GET", f"/files/{file_id}")
    assert status == 404 and data["error"]["param"] == "id"
