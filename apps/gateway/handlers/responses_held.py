"""Stored responses the gateway holds itself (answered by a Chat-only provider): retrieve, delete, input items.

The caller has already checked that the response is the key's project's
(``apps.gateway.conversations``). What OpenAI answers, answered from our state:
retrieve is the Response object; delete forgets the response and its conversation
(``{"id", "object": "response", "deleted": true}``; its Postgres copy goes too); ``input_items`` lists the
response's own input items, newest first unless ``order=asc``, ``limit`` 1 to 100
(20 by default) after the item ``after``; cancel is a 400, since only background
responses can be cancelled and a Chat-only provider never runs one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from apps.core.errors import bad_request
from apps.core.responses_chat import held_delete_event
from apps.gateway import conversations
from apps.gateway.asgi import Scope
from apps.gateway.conversations import not_found
from apps.gateway.runtime import Runtime

DEFAULT_PAGE = 20
MAX_PAGE = 100


async def answer(rt: Runtime, scope: Scope, response_id: str, action: str, project_id: int) -> bytes:
    """The JSON body of a 200 for one of a held conversation's responses (a GatewayError otherwise)."""
    state = await conversations.state_of(rt.fast_redis, rt.limits.prefix, response_id)
    if state is None:
        raise not_found(response_id)
    if action == "cancel":
        raise bad_request("Only responses created with background=true can be cancelled.", code="invalid_request")
    if action == "input_items":
        body = _page(state["input"], scope.get("query_string") or b"")
    elif scope["method"] == "DELETE":
        await conversations.forget(rt.fast_redis, rt.limits.prefix, response_id)
        await rt.held_writer.write(held_delete_event(response_id=response_id, project_id=project_id))
        body = {"id": response_id, "object": "response", "deleted": True}
    else:
        body = state["response"]
    return orjson.dumps(body)


def _page(items: list[Any], query: bytes) -> dict[str, Any]:
    params = {k: v[-1] for k, v in parse_qs(query.decode("latin-1"), max_num_fields=20).items()}
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("Invalid value for 'order': expected 'asc' or 'desc'.", param="order", code="invalid_value")
    limit_text = params.get("limit", str(DEFAULT_PAGE))
    if not (limit_text.isdigit() and len(limit_text) <= 3 and 1 <= int(limit_text) <= MAX_PAGE):
        raise bad_request(f"Invalid 'limit': expected an integer from 1 to {MAX_PAGE}.", param="limit",
                          code="invalid_value")  # fmt: skip
    ordered = [item for item in items if isinstance(item, dict)]
    if order == "desc":
        ordered.reverse()
    after = params.get("after")
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise bad_request(f"No input item with id '{after[:200]}'.", param="after", code="invalid_value")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[: int(limit_text)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > len(page),
    }
