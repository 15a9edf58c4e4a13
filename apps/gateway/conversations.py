"""Which project owns each stored response, on which provider: the Responses API's state, in Redis.

Upstreams that speak Responses keep the conversation themselves; we keep, per
response id, the project and provider it belongs to (so one project can never
retrieve, delete, cancel or continue another's response: it is a 404) and the
tokens the conversation has used so far (what a continuation's prompt can be at
most, which budgets reserve). Entries live as long as OpenAI keeps a stored
response (30 days). Written before the app sees the response's end, so a next
turn sent at once finds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from apps.core import names
from apps.core.errors import GatewayError
from apps.core.events import clean_count, clean_id
from apps.enforcement.fastredis import FastRedis

OWNER_TTL_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Owner:
    project_id: int
    provider_id: int
    model: str
    tokens: int  # input and output of the conversation up to and including this response


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    """OpenAI's 404 for a response id: the same whether it does not exist or belongs to another project."""
    what = "Previous response" if param == "previous_response_id" else "Response"
    return GatewayError(404, f"{what} with id '{response_id[:200]}' not found.", param=param, code="not_found")


async def owner_of(redis: FastRedis, prefix: str, response_id: str, project_id: int) -> Owner | None:
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
    return Owner(project_id, data["provider"], str(data.get("model") or ""), clean_count(data.get("tokens")))


async def remember(redis: FastRedis, prefix: str, response_id: str, owner: Owner) -> None:
    value = orjson.dumps(
        {"project": owner.project_id, "provider": owner.provider_id, "model": owner.model, "tokens": owner.tokens}
    )
    await redis.execute("SET", names.response_owner(prefix, response_id), value, "EX", OWNER_TTL_SECONDS)


async def forget(redis: FastRedis, prefix: str, response_id: str) -> None:
    await redis.execute("DEL", names.response_owner(prefix, response_id))
