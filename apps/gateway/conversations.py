"""Which project owns each stored response, on which provider: the Responses API's state, in Redis.

Upstreams that speak Responses keep the conversation themselves; we keep, per
response id, the project and provider it belongs to (so one project can never
retrieve, delete, cancel or continue another's response: it is a 404) and the
tokens the conversation has used so far (what a continuation's prompt can be at
most, which budgets reserve). Entries live as long as OpenAI keeps a stored
response (30 days). Written before the app sees the response's end, so a next
turn sent at once finds it.

A conversation on a provider that speaks only Chat Completions is held by us
(``translated``): the response itself and its input items (the turns before it,
and its own) are kept beside the owner, under the same TTL, and a next turn sends
them all upstream again as chat messages. Redis is that state's home, as it is the
owners': the gateway has no database, the next turn must read it within the same
millisecond it was written, and OpenAI itself keeps a stored response 30 days, not
for ever. Deleting the response deletes both keys. The durable copy goes to Postgres
the way ledger rows do: an event on its own stream (``names.held_responses_stream``,
spooled to disk when Redis refuses it), stored by a consumer
(``apps.ledger.held_responses``). When Redis loses the serving copy (a restart without
persistence, a flush), ``apps.ledger.held_restore`` writes it back from Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from apps.core import names
from apps.core.errors import GatewayError
from apps.core.events import clean_count, clean_id
from apps.core.responses_chat import STORED_TTL_SECONDS, owner_record
from apps.enforcement.redis_clients import FastClient

# Every turn of a conversation we hold stores the turns before it again: past this, a next turn is refused
# (the app starts a new conversation) rather than letting one conversation grow Redis without bound.
HELD_STATE_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Owner:
    project_id: int
    provider_id: int
    model: str
    tokens: int  # input and output of the conversation up to and including this response
    translated: bool = False  # held by us (a Chat-only provider): see ``state_of``


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    """OpenAI's 404 for a response id: the same whether it does not exist or belongs to another project."""
    what = "Previous response" if param == "previous_response_id" else "Response"
    return GatewayError(404, f"{what} with id '{response_id[:200]}' not found.", param=param, code="not_found")


async def owner_of(redis: FastClient, prefix: str, response_id: str, project_id: int) -> Owner | None:
    """The response's owner if it is ``project_id``'s, else None (unknown, expired or another project's)."""
    raw = await redis.execute("GET", names.response_owner(prefix, response_id))
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("project") != project_id or clean_id(data.get("provider")) is None:
        return None
    return Owner(project_id, data["provider"], str(data.get("model") or ""), clean_count(data.get("tokens")),
                 translated=data.get("translated") is True)  # fmt: skip


async def remember(
    redis: FastClient, prefix: str, response_id: str, owner: Owner, state: dict[str, Any] | None = None
) -> None:
    """Note the owner (and, for a conversation we hold, its ``state``); the state is written first, so an
    owner marked translated always has one to read."""
    value = owner_record(
        project_id=owner.project_id, provider_id=owner.provider_id, model=owner.model, tokens=owner.tokens,
        translated=owner.translated,
    )  # fmt: skip
    if state is not None:
        await redis.execute("SET", names.response_state(prefix, response_id), orjson.dumps(state), "EX",
                            STORED_TTL_SECONDS)  # fmt: skip
    await redis.execute("SET", names.response_owner(prefix, response_id), value, "EX", STORED_TTL_SECONDS)


async def state_of(
    redis: FastClient, prefix: str, response_id: str, *, to_continue: bool = False
) -> dict[str, Any] | None:
    """A held conversation's state: ``response`` (the Response object), ``context`` (the items of the turns
    before it) and ``input`` (its own input items); None when it is gone or not an object. ``to_continue``:
    a 400 when it is too long to continue."""
    raw = await redis.execute("GET", names.response_state(prefix, response_id))
    if to_continue and raw is not None and len(raw) > HELD_STATE_MAX_BYTES:
        raise GatewayError(400, f"The conversation of '{response_id}' is longer than {HELD_STATE_MAX_BYTES} bytes; "
                           "start a new one.", param="previous_response_id", code="conversation_too_long")  # fmt: skip
    try:
        data = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("context", "input")):
        return None
    return data if isinstance(data.get("response"), dict) else None


async def forget(redis: FastClient, prefix: str, response_id: str) -> None:
    # Two commands, not one DEL of both keys: on a Redis Cluster the two keys may sit in different slots.
    await redis.execute("DEL", names.response_state(prefix, response_id))
    await redis.execute("DEL", names.response_owner(prefix, response_id))
