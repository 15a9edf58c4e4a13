"""The durable copy of the responses the gateway holds itself: the held-responses stream, into Postgres.

A response answered by a Chat-only provider (``store`` on) is kept by the gateway
in Redis for the next turn and for retrieve (``apps.gateway.conversations``), and
announced on ``names.held_responses_stream`` (``apps.core.responses_chat``'s
``held_store_event`` / ``held_delete_event``). This consumer stores each as a
``HeldResponse`` row, scoped to its project, and removes it when the app deletes it.
As the ledger's consumer does: acknowledged after commit, a re-read never
duplicates (response ids are unique), events of projects deleted since are dropped,
and an event that cannot be read or stored is dead-lettered while the others go in.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis
from django.conf import settings
from django.db import transaction

from apps.core import names
from apps.core.events import EVENT_FIELD, clean_id, clean_text
from apps.core.responses import is_response_id
from apps.core.responses_chat import HELD_DELETE, HELD_STORE
from apps.core.storable import without_nul
from apps.ledger.consumer import dead_letters_report, parse_entries, store_or_bisect
from apps.ledger.models import HeldResponse
from apps.ledger.stream import acknowledge, ensure_group, read_batch
from apps.providers.models import Provider
from apps.tenancy.models import Project

MODEL_MAX = 200


def held_responses_stream() -> str:
    return names.held_responses_stream(settings.REDIS_PREFIX)


def _row(event: dict[str, Any]) -> HeldResponse:
    # What the app sent and got back is kept whatever it holds: a NUL (which jsonb refuses, and which
    # dead-lettered the whole response before) is kept as U+FFFD.
    response, input_items = without_nul(event["response"]), without_nul(event.get("input"))
    if not isinstance(response, dict) or not isinstance(input_items, list):
        raise TypeError("a held response carries its Response object and its input items")
    project_id, provider_id = clean_id(event.get("project_id")), clean_id(event.get("provider_id"))
    if project_id is None:
        raise ValueError(f"not a project id: {event.get('project_id')!r:.100}")
    previous = response.get("previous_response_id")
    output = response.get("output")
    return HeldResponse(
        response_id=_response_id(event),
        project_id=project_id,
        provider_id=provider_id,
        model=clean_text(event.get("model"), MODEL_MAX),
        previous_response_id=str(previous) if is_response_id(previous) else "",
        input_items=input_items,
        output_items=output if isinstance(output, list) else [],
        usage=response.get("usage") if isinstance(response.get("usage"), dict) else None,
        response=response,
        created_at=dt.datetime.fromtimestamp(float(event["created_at"]), dt.UTC),
    )


def _parse(event: Any) -> HeldResponse | tuple[int, str]:
    """A store event as its row; a delete event as (project id, response id)."""
    if not isinstance(event, dict) or event.get("type") not in (HELD_STORE, HELD_DELETE):
        raise TypeError("a held-response event is an object of type 'store' or 'delete'")
    if event["type"] == HELD_STORE:
        return _row(event)
    project_id = clean_id(event.get("project_id"))
    if project_id is None:
        raise ValueError(f"not a project id: {event.get('project_id')!r:.100}")
    return project_id, _response_id(event)


def _response_id(event: dict[str, Any]) -> str:
    response_id = event.get("response_id")
    if not is_response_id(response_id):
        raise ValueError(f"not a response id: {response_id!r:.100}")
    assert isinstance(response_id, str)
    return response_id


def held_responses_ingest_batch(*, client: redis.Redis, consumer: str, count: int = 200, block_ms: int = 0) -> int:
    """Store (or delete) up to ``count`` held responses from the gateway's stream; returns how many were handled."""
    stream = held_responses_stream()
    ensure_group(client, stream)
    entries = read_batch(client, stream, consumer, count=count, block_ms=block_ms, claim_idle_ms=30_000)
    if not entries:
        return 0
    parsed, dead = parse_entries(entries, _parse, EVENT_FIELD)
    rows = [(entry_id, fields, row) for entry_id, fields, row in parsed if isinstance(row, HeldResponse)]
    deletes = [row for _entry_id, _fields, row in parsed if isinstance(row, tuple)]
    projects = set(Project.objects.filter(id__in={r.project_id for _i, _f, r in rows}).values_list("id", flat=True))
    providers = set(Provider.objects.filter(id__in={r.provider_id for _i, _f, r in rows}).values_list("id", flat=True))
    for _entry_id, _fields, row in rows:
        if row.provider_id not in providers:
            row.provider_id = None  # the provider was deleted since; the response stays the project's
    refused = store_or_bisect(
        [row for row in rows if row[2].project_id in projects],
        lambda chunk: HeldResponse.objects.bulk_create([r for _i, _f, r in chunk], ignore_conflicts=True),
    )
    dead += [(entry_id, fields, error) for (entry_id, fields, _row), error in refused]
    # A delete follows its store on the stream: applied after this batch's stores.
    with transaction.atomic():
        for project_id, response_id in deletes:
            HeldResponse.objects.filter(project_id=project_id, response_id=response_id).delete()
    dead_letters_report(stream=stream, dead=dead, field=EVENT_FIELD)
    acknowledge(client, stream, [entry_id for entry_id, _fields in entries], dead_letters=dead)
    return len(entries)
