"""Held conversations read back from Postgres into Redis after Redis lost them: the unmodified openai SDK
against a live gateway whose simulated provider speaks only Chat, so the gateway holds the conversation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import openai
import orjson
import pytest
import redis
from django.conf import settings
from django.core.management import call_command

from apps.core import names
from apps.core.responses_chat import STORED_TTL_SECONDS
from apps.ledger.held_responses import held_responses_ingest_batch
from apps.ledger.held_restore import held_responses_restore
from apps.ledger.models import HeldResponse
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import chat_only, simulator_direct

pytestmark = pytest.mark.live


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    return chat_only(gateway, tenant)


@pytest.fixture
def direct(upstream: str) -> openai.OpenAI:
    return simulator_direct(upstream)


def _ingest(redis_client: redis.Redis) -> None:
    while held_responses_ingest_batch(client=redis_client, consumer="tests"):
        pass


def _lose_conversations(redis_client: redis.Redis) -> None:
    """What a Redis restarted without persistence (or flushed) leaves: none of the conversations, no marker."""
    for pattern in ("resp:*", "respstate:*"):
        for key in redis_client.scan_iter(match=settings.REDIS_PREFIX + pattern, count=1000):
            redis_client.delete(key)


def _keys(redis_client: redis.Redis, response_id: str) -> tuple[Any, Any]:
    """The owner and state the gateway reads, parsed (Postgres keeps JSON objects, not their key order)."""
    prefix = settings.REDIS_PREFIX
    owner, state = (redis_client.get(names.response_owner(prefix, response_id)),
                    redis_client.get(names.response_state(prefix, response_id)))  # fmt: skip
    return (None if owner is None else orjson.loads(owner)), (None if state is None else orjson.loads(state))


def test_a_two_turn_conversation_lost_by_redis_is_restored_and_continues(
    client: openai.OpenAI, direct: openai.OpenAI, redis_client: redis.Redis
) -> None:
    one = client.responses.create(model="gpt-4o-mini", input="My name is Ada.")
    two = client.responses.create(model="gpt-4o-mini", input="What is my name?", previous_response_id=one.id)
    _ingest(redis_client)
    written = {r: _keys(redis_client, r) for r in (one.id, two.id)}
    _lose_conversations(redis_client)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", input="Thanks!", previous_response_id=two.id)

    assert held_responses_restore() == 2
    # What the gateway had written: the owner, and the state with the first turn as context.
    assert {r: _keys(redis_client, r) for r in (one.id, two.id)} == written
    ttl = redis_client.ttl(names.response_state(settings.REDIS_PREFIX, two.id))
    assert STORED_TTL_SECONDS - 60 < ttl <= STORED_TTL_SECONDS
    three = client.responses.create(model="gpt-4o-mini", input="Thanks!", previous_response_id=two.id)
    user = [{"role": "user", "content": [{"type": "text", "text": t}]} for t in
            ("My name is Ada.", "What is my name?", "Thanks!")]  # fmt: skip
    whole = [user[0], {"role": "assistant", "content": one.output_text},
             user[1], {"role": "assistant", "content": two.output_text}, user[2]]  # fmt: skip
    answer = direct.chat.completions.create(model="gpt-4o-mini", messages=whole)  # type: ignore[arg-type]
    assert three.output_text == answer.choices[0].message.content  # the whole conversation reached the provider
    assert client.responses.retrieve(one.id).output_text == one.output_text
    items = client.responses.input_items.list(two.id).data
    assert [item.model_dump()["content"][0]["text"] for item in items] == ["What is my name?"]


def test_the_marker_makes_the_periodic_run_cheap_and_nothing_is_overwritten(
    client: openai.OpenAI, redis_client: redis.Redis
) -> None:
    one = client.responses.create(model="gpt-4o-mini", input="Hello there.")
    _ingest(redis_client)
    held_responses_restore(force=True)
    assert held_responses_restore() is None  # the marker is there: nothing was lost
    # Keys Redis still holds are left as they are (SET NX), also when a restore is forced.
    redis_client.set(names.response_owner(settings.REDIS_PREFIX, one.id), b'"newer"')
    assert held_responses_restore(force=True) == 0
    assert _keys(redis_client, one.id)[0] == "newer"
    call_command("restore_held_responses")  # the marker: nothing to do


def test_another_projects_restored_conversation_stays_a_404(
    gateway: str, client: openai.OpenAI, upstream: str, redis_client: redis.Redis
) -> None:
    mine = client.responses.create(model="gpt-4o-mini", input="Secret plans.")
    _ingest(redis_client)
    _lose_conversations(redis_client)
    held_responses_restore()
    other = chat_only(gateway, tenant_make(upstream_url=upstream))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="gpt-4o-mini", input="Go on", previous_response_id=mine.id)
    assert client.responses.retrieve(mine.id).output_text == mine.output_text


def test_rows_that_cannot_be_restored_are_skipped_not_fatal(
    client: openai.OpenAI, tenant: Tenant, redis_client: redis.Redis
) -> None:
    base = {"project": tenant.project, "provider": tenant.provider, "model": "gpt-4o-mini", "response": {"id": "x"}}
    now = dt.datetime.now(dt.UTC)
    HeldResponse.objects.create(response_id="resp_loop_a", previous_response_id="resp_loop_b", input_items={"a": 1},
                                output_items=7, created_at=now, **base)  # fmt: skip
    HeldResponse.objects.create(response_id="resp_loop_b", previous_response_id="resp_loop_a", created_at=now, **base)
    HeldResponse.objects.create(response_id="resp_old", created_at=now - dt.timedelta(days=31), **base)
    HeldResponse.objects.create(response_id="resp_gone", created_at=now, **{**base, "provider": None})
    _lose_conversations(redis_client)
    assert held_responses_restore() == 2  # the two of a (broken) chain; not the expired one nor the providerless one
    assert _keys(redis_client, "resp_old") == (None, None) and _keys(redis_client, "resp_gone") == (None, None)
