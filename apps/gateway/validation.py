"""Reading a request body; what a body may say is the shared contract in ``apps.core.request``."""

from __future__ import annotations

from typing import Any

import orjson

from apps.core.errors import bad_request


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request. The body must be valid JSON.") from None
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    return payload
