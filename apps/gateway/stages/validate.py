"""Validate: read the body, parse it, hold it to the request contract and attribute it.

What a body may say, and who a request is for, is the shared contract in
``apps.core.request`` (the batch runner checks its lines with the same rules).
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.core.anthropic import ENDPOINT_MESSAGES, messages_to_chat
from apps.core.errors import bad_request
from apps.core.pricing import tier_name
from apps.core.request import ENDPOINT_EMBEDDINGS, attribution, prompt_estimate, shallow_json, validate
from apps.gateway.asgi import Receive, read_body
from apps.gateway.call import Call


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


def attribute(call: Call, headers: dict[bytes, bytes], user: Any = None) -> None:
    """The feature and end user: the X-Feature / X-End-User headers, then ``user``, then the key's default."""
    call.feature, call.end_user = attribution(
        feature=headers.get(b"x-feature", b"").decode("utf-8", "replace"),
        end_user=headers.get(b"x-end-user", b"").decode("utf-8", "replace"),
        user=user,
        default_feature=call.key.default_feature,
    )


async def read_request(
    call: Call, receive: Receive, headers: dict[bytes, bytes], max_body_bytes: int
) -> dict[str, Any]:
    """The request's payload, checked; ``call`` learns its model, attribution, streaming and prompt estimate."""
    raw = await read_body(receive, max_body_bytes)
    return accept(call, headers, parse_body(raw), shallow=shallow_json(raw))


async def read_messages_request(
    call: Call, receive: Receive, headers: dict[bytes, bytes], max_body_bytes: int
) -> dict[str, Any]:
    """A Messages API request (``/v1/messages``), translated to the chat request the pipeline runs, then checked."""
    call.entry = ENDPOINT_MESSAGES
    return accept(call, headers, messages_to_chat(parse_body(await read_body(receive, max_body_bytes))))


def accept(
    call: Call, headers: dict[bytes, bytes], payload: dict[str, Any], *, shallow: bool = False
) -> dict[str, Any]:
    """Hold ``payload`` to the request contract; ``call`` learns what it asks for. ``shallow``: see ``validate``."""
    user = payload.get("user")
    if user:
        attribute(call, headers, user)
    validate(call.endpoint, payload, shallow=shallow)
    call.requested_model = payload["model"]
    call.streamed = bool(payload.get("stream")) and call.endpoint != ENDPOINT_EMBEDDINGS
    call.prompt_tokens = prompt_estimate(call.endpoint, payload)
    call.service_tier = tier_name(payload.get("service_tier"))
    return payload
