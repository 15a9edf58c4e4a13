"""The ledger consumer: nothing lost when it dies, nothing counted twice."""

from __future__ import annotations

import io
import os
import signal
import time
import uuid

import orjson
import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from apps.core.events import EVENT_FIELD
from apps.ledger.consumer import consume_until_stopped
from apps.ledger.models import BackgroundResponse, LedgerEntry
from apps.ledger.services import dead_letter_stream, ensure_group, ledger_ingest_batch, ledger_stream
from apps.ledger.stream import GROUP
from tests import live
from tests.factories import Tenant, tenant_make


def _event(tenant: Tenant, n: int) -> dict:
    return {
        "request_id": f"req_{uuid.uuid4().hex}",
        "created_at": time.time(),
        "organization_id": tenant.org.id,
        "project_id": tenant.project.id,
        "api_key_id": tenant.key.api_key.id,
        "provider_id": tenant.provider.id,
        "endpoint": "chat.completions",
        "feature": "f",
        "end_user": f"u{n % 7}",
        "requested_model": "gpt-4o",
        "served_model": "gpt-4o",
        "prompt_tokens": 10,
        "cached_tokens": 0,
        "completion_tokens": 5,
        "usage_estimated": False,
        "cost": "0.00007500",
        "counterfactual_cost": "0.00007500",
        "latency_ms": 3,
        "ttft_ms": 2,
        "status_code": 200,
        "error_code": "",
        "streamed": False,
        "cache_hit": "",
        "route": "direct",
    }


def _publish(client: redis.Redis, events: list[dict]) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(ledger_stream(), {EVENT_FIELD: orjson.dumps(event)})
    pipe.execute()


@pytest.fixture
def client() -> redis.Redis:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(ledger_stream(), dead_letter_stream())
    ensure_group(client)
    return client


@pytest.mark.django_db(transaction=True)
def test_consumer_killed_mid_batch_loses_nothing(client: redis.Redis) -> None:
    tenant = tenant_make()
    events = [_event(tenant, n) for n in range(20000)]
    _publish(client, events)

    # A consumer that read a batch and died before inserting it: its entries stay pending.
    client.xreadgroup(GROUP, "died-after-read", {ledger_stream(): ">"}, count=150)

    # A real consumer process, killed with SIGKILL while it is working through the stream.
    consumer = live.start_manage("ingest_ledger", "--batch-size", "50", "--claim-idle-ms", "600000", name="ingest")
    live.wait_until(lambda: LedgerEntry.objects.count() >= 300, timeout=30)
    consumer.kill(signal.SIGKILL)
    consumer.stop()
    after_kill = LedgerEntry.objects.count()
    assert 0 < after_kill < len(events), "the kill happened mid-stream"
    pending = client.xpending(ledger_stream(), GROUP)["pending"]
    assert pending >= 150, "the dead consumers left unacknowledged entries behind"

    # A new consumer takes over what the dead ones held, then the rest.
    while ledger_ingest_batch(client=client, consumer="successor", block_ms=0, claim_idle_ms=0):
        pass

    ids = list(LedgerEntry.objects.values_list("request_id", flat=True))
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {e["request_id"] for e in events}
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 0
    assert client.xlen(ledger_stream()) == 0, "acknowledged entries are removed from the stream"


@pytest.mark.django_db(transaction=True)
def test_redelivery_after_commit_does_not_duplicate(client: redis.Redis) -> None:
    tenant = tenant_make()
    events = [_event(tenant, n) for n in range(20)]
    _publish(client, events)
    # Simulate a consumer that committed rows but died before XACK: insert, don't ack.
    entries = client.xreadgroup(GROUP, "committed-then-died", {ledger_stream(): ">"}, count=20)[0][1]
    from apps.ledger.services import _entry_from_event

    LedgerEntry.objects.bulk_create([_entry_from_event(orjson.loads(fields[EVENT_FIELD])) for _id, fields in entries])

    assert ledger_ingest_batch(client=client, consumer="successor", block_ms=0, claim_idle_ms=0) == 20
    assert LedgerEntry.objects.count() == 20
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 0


@pytest.mark.django_db(transaction=True)
def test_unreadable_event_is_dead_lettered_not_dropped(client: redis.Redis) -> None:
    tenant = tenant_make()
    good = _event(tenant, 1)
    client.xadd(ledger_stream(), {EVENT_FIELD: b"{broken json"})
    _publish(client, [good])
    ledger_ingest_batch(client=client, consumer="c", block_ms=0)
    assert LedgerEntry.objects.filter(request_id=good["request_id"]).exists()
    dead = client.xrange(dead_letter_stream())
    assert len(dead) == 1 and dead[0][1][EVENT_FIELD] == b"{broken json"
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 0


@pytest.mark.django_db(transaction=True)
def test_an_event_twice_in_one_batch_is_one_row(client: redis.Redis) -> None:
    tenant = tenant_make()
    event, other = _event(tenant, 1), _event(tenant, 2)
    _publish(client, [event, other, event])
    assert ledger_ingest_batch(client=client, consumer="c", block_ms=0) == 3
    assert sorted(LedgerEntry.objects.values_list("request_id", flat=True)) == sorted(
        [event["request_id"], other["request_id"]]
    )
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_background_responses_row_gets_its_read_back_row_once_whatever_its_id_holds(client: redis.Redis) -> None:
    tenant = tenant_make()
    background = {**_event(tenant, 1), "endpoint": "responses", "background_response_id": "resp_\x00abc" + "x" * 500}
    no_provider = {**_event(tenant, 2), "provider_id": None, "background_response_id": "resp_2"}
    odd_type = {**_event(tenant, 3), "background_response_id": ["resp_3"]}
    _publish(client, [background, no_provider, odd_type, background])
    assert ledger_ingest_batch(client=client, consumer="c", block_ms=0) == 4
    assert LedgerEntry.objects.count() == 3 and not client.xrange(dead_letter_stream())
    held = BackgroundResponse.objects.get()
    assert held.request_id == background["request_id"] and held.status == "pending"
    assert held.response_id == ("resp_abc" + "x" * 500)[:200] and held.provider_id == tenant.provider.id


@pytest.mark.django_db(transaction=True)
def test_a_clean_batch_goes_straight_into_the_ledger_as_the_orm_would_store_it(client: redis.Redis) -> None:
    """The fast path (one COPY into the ledger, no staging table) stores what the ORM would, field by field."""
    from django.db import connection

    from apps.ledger.services import INGEST_COLUMNS, _entry_from_event

    tenant = tenant_make()
    events = [
        {**_event(tenant, n), "decision": {"kind": "rule", "model": "gpt-4o", "reason": "tab\there"}} for n in range(5)
    ]
    events[0] |= {"feature": "back\\slash", "end_user": "naïve ☃", "ttft_ms": None, "cost": "0.12345678"}
    events[1] |= {"endpoint": "responses", "background_response_id": "resp_fast"}
    _publish(client, events)
    connection.close()  # a new session: the staging table of an earlier test's fallback is gone
    before = time.time()
    assert ledger_ingest_batch(client=client, consumer="c", block_ms=0) == 5
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pg_temp.ledger_ingest_staging')")
        assert cursor.fetchone() == (None,)  # the fallback never ran
    for event in events:
        row = LedgerEntry.objects.get(request_id=event["request_id"])
        expected = _entry_from_event(orjson.loads(orjson.dumps(event)))
        assert {c: getattr(row, c) for c in INGEST_COLUMNS} == {c: getattr(expected, c) for c in INGEST_COLUMNS}
        assert before - 1 < row.ingested_at.timestamp() < time.time() + 1
    # A background response's read-back row goes in with its ledger row.
    held = BackgroundResponse.objects.get()
    assert (held.request_id, held.response_id) == (events[1]["request_id"], "resp_fast")


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_stored_new_and_unreadable_events_stores_each_new_one_once(client: redis.Redis) -> None:
    """The fast COPY fails on the stored request ids; the fallback skips them and still stores the new ones."""
    from apps.ledger.services import _entry_from_event

    tenant = tenant_make()
    stored, new = [_event(tenant, n) for n in range(4)], [_event(tenant, n) for n in range(4, 9)]
    LedgerEntry.objects.bulk_create([_entry_from_event(dict(event)) for event in stored])
    _publish(client, [stored[0], new[0], stored[1], new[1], new[2], stored[2], new[3], stored[3], new[4]])
    client.xadd(ledger_stream(), {EVENT_FIELD: b"[]"})
    assert ledger_ingest_batch(client=client, consumer="c", block_ms=0) == 10
    assert sorted(LedgerEntry.objects.values_list("request_id", flat=True)) == sorted(
        e["request_id"] for e in stored + new
    )
    assert client.xlen(dead_letter_stream()) == 1
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 0


def _sessions() -> int:
    """Connections ever made to the test database (Postgres's own count)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_running_consumer_keeps_its_database_connection_across_batches(client: redis.Redis) -> None:
    """With the default CONN_MAX_AGE (0) a consumer used to close its connection after every batch: under
    traffic, a new Postgres backend for every few rows."""
    tenant = tenant_make()
    before = _sessions()
    consumer = live.start_manage("ingest_ledger", "--batch-size", "10", "--linger-ms", "0", name="ingest")
    try:
        for wave in range(10):  # one batch or more each, apart in time as traffic is
            _publish(client, [_event(tenant, n) for n in range(wave * 10, wave * 10 + 10)])
            live.wait_until(lambda wave=wave: LedgerEntry.objects.count() == wave * 10 + 10, timeout=30)
    finally:
        consumer.stop()
    # A backend reports its session within a second or at its exit; the consumer has exited.
    made = live.wait_until(lambda: _sessions() - before or None, timeout=10)
    # Its own, and any its start-up made: 1-3 here, and once 4 on a box loaded with other work (not explained).
    # A connection a batch, as before, made 18: the bound sits well clear of both.
    assert made <= 5, f"{made} connections for 10 batches or more"


def test_after_a_short_batch_the_consumer_lingers_and_reads_a_full_one_at_once() -> None:
    """``linger_ms`` lets a batch gather under steady traffic; a backlog is read without waiting."""
    calls: list[float] = []
    batches = [3, 10, 3]  # short, full (batch_size 10), short

    def step(_block_ms: int) -> int:
        calls.append(time.monotonic())
        if len(calls) > len(batches):
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's own handler stops it
            return 0
        return batches[len(calls) - 1]

    kept = {alias: dict(connections[alias].settings_dict) for alias in connections}
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        total = consume_until_stopped(step, once=False, block_ms=0, batch_size=10, linger_ms=1000)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        for alias, settings_dict in kept.items():  # the loop set this process up as a consumer's
            connections[alias].settings_dict.clear()
            connections[alias].settings_dict.update(settings_dict)
    assert total == 16
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.99, "after a short batch it waited"
    assert gaps[1] < 0.5, "after a full batch it read again at once"
    assert gaps[2] >= 0.99


@pytest.mark.parametrize("linger", ["-1", "10001", "soon", "1e9", ""])
def test_the_consumer_refuses_a_linger_it_cannot_honour(linger: str) -> None:
    with pytest.raises(CommandError):
        call_command("ingest_ledger", "--once", "--linger-ms", linger, stdout=io.StringIO())
