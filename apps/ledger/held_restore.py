"""Held conversations written back from Postgres into Redis when Redis lost them.

The gateway serves the conversations it holds for Chat-only providers from Redis
(``apps.gateway.conversations``); Postgres keeps their durable copy (``HeldResponse``,
``apps.ledger.held_responses``). A Redis restarted without persistence, or flushed, loses
the serving copy, and every ``previous_response_id``, retrieve and ``input_items`` of those
conversations would be a 404. This restore rewrites, for each live row (younger than the 30
days a stored response is kept, not deleted), the owner and state the gateway wrote: the
state's ``context`` rebuilt from the chain of earlier turns (``previous_response_id``), the
keys' TTL what is left of the 30 days. Only keys Redis lacks are written (``SET NX``): what
the gateway wrote since is never overwritten.

Cheap when nothing was lost: a marker key (``names.held_restored``) is set after a restore,
and the periodic task (``ledger.restore_held_responses``) does nothing while it is there. A
Redis that lost the conversations lost the marker too. ``manage.py restore_held_responses
--force`` restores whatever the marker says (after a partial loss, e.g. an eviction).

Not restored: a response whose provider was deleted (no owner to write), and one deleted by
the app whose delete had not reached Postgres yet (the consumer runs every 10 s).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
import redis
from django.conf import settings
from django.utils import timezone

from apps.core import names
from apps.core.responses import usage_counts
from apps.core.responses_chat import STORED_TTL_SECONDS, held_state, owner_record
from apps.core.text import json_tokens
from apps.ledger.models import HeldResponse
from apps.ledger.services import redis_client

BATCH = 500


def held_responses_restore(*, force: bool = False, client: redis.Redis | None = None) -> int | None:
    """Write back the live held conversations Redis lacks; the number written, or None when the marker says
    nothing was lost (and ``force`` is off)."""
    client = client or redis_client()
    prefix = settings.REDIS_PREFIX
    if not force and client.exists(names.held_restored(prefix)):
        return None
    now = timezone.now()
    since = now - dt.timedelta(seconds=STORED_TTL_SECONDS)
    restored = 0
    after: dict[str, list[Any]] = {}
    for rows in _batches(HeldResponse.objects.filter(created_at__gt=since, provider__isnull=False).order_by("pk")):
        pipe = client.pipeline(transaction=False)
        for row in rows:
            pipe.exists(names.response_owner(prefix, row.response_id))
        missing = [row for row, present in zip(rows, pipe.execute(), strict=True) if not present]
        pipe = client.pipeline(transaction=False)
        for row in missing:
            ttl = int(STORED_TTL_SECONDS - (now - row.created_at).total_seconds())
            if ttl <= 0 or row.provider_id is None:
                continue
            context = _context(row, after, since)
            state = held_state(response=row.response, context=context, input_items=_items(row.input_items))
            owner = owner_record(project_id=row.project_id, provider_id=row.provider_id, model=row.model,
                                 tokens=_tokens(row, context), translated=True)  # fmt: skip
            # The state first, as the gateway writes them: an owner marked translated always has its state.
            pipe.set(names.response_state(prefix, row.response_id), orjson.dumps(state), ex=ttl, nx=True)
            pipe.set(names.response_owner(prefix, row.response_id), owner, ex=ttl, nx=True)
            restored += 1
        pipe.execute()
    client.set(names.held_restored(prefix), now.isoformat())
    return restored


def _batches(queryset: Any) -> Iterator[list[HeldResponse]]:
    batch: list[HeldResponse] = []
    for row in queryset.iterator(chunk_size=BATCH):
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _context(row: HeldResponse, after: dict[str, list[Any]], since: dt.datetime) -> list[Any]:
    """The items of the turns before ``row`` (each turn's input, then its output), oldest first, as the gateway
    sent them with ``row``'s request; a chain that leaves this project or is gone ends there. ``after`` holds,
    per response of this pass, the items up to and including it (what its next turn starts from)."""
    chain: list[HeldResponse] = []
    previous, seen = row.previous_response_id, {row.response_id}
    while previous and previous not in after and previous not in seen:
        seen.add(previous)
        earlier = HeldResponse.objects.filter(
            response_id=previous, project_id=row.project_id, created_at__gt=since
        ).first()
        if earlier is None:
            break
        chain.append(earlier)
        previous = earlier.previous_response_id
    context: list[Any] = after.get(previous, []) if previous else []
    for earlier in reversed(chain):
        context = after[earlier.response_id] = [*context, *_items(earlier.input_items), *_items(earlier.output_items)]
    after[row.response_id] = [*context, *_items(row.input_items), *_items(row.output_items)]
    return context


def _tokens(row: HeldResponse, context: list[Any]) -> int:
    """What the conversation has used up to this response: its usage, or an estimate of all its items."""
    counts = usage_counts(row.usage)
    if counts is not None:
        return counts.prompt_tokens + counts.completion_tokens
    return json_tokens([*context, *_items(row.input_items), *_items(row.output_items)])


def _items(value: Any) -> list[Any]:
    """A row's items (the consumer stores lists only; anything else is read as none)."""
    return value if isinstance(value, list) else []
