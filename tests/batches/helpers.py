"""What the Files and Batch API tests share: one valid input line, raw HTTP for what the SDK would not
send, and a second tenant whose key is live."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import wait_key_live

CHAT_LINE = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip


def raw_request(
    gateway: str, key: str, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    """``method path`` on the gateway's /v1 with ``key``, sent as given; the status and the JSON answer."""
    parts = urlsplit(gateway)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        conn.request(method, parts.path + path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def other_tenant(gateway: str, tenant: Tenant, upstream: str) -> Tenant:
    """Another organisation's tenant; both its key and ``tenant``'s are live on the gateway."""
    other = tenant_make(upstream_url=upstream)
    wait_key_live(gateway, tenant.key.plaintext)
    wait_key_live(gateway, other.key.plaintext)
    return other
