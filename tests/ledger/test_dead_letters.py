"""One bad entry cannot stop a consumer: the good ones land, the bad one is dead-lettered with its error."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
import redis
from django.conf import settings
from django.test import Client

from apps.budgets.models import Alert, AlertKind
from apps.cache.models import CacheEntry
from apps.cache.services import cache_ingest_batch, cache_stream
from apps.core import names
from apps.core.events import BODY_FIELD, EVENT_FIELD
from apps.ledger.models import LedgerEntry
from apps.ledger.services import dead_letter_stream, ensure_group, ledger_ingest_batch, ledger_stream
from apps.ledger.stream import GROUP
from apps.routing.models import ShadowComparison
from apps.routing.services import shadow_ingest_batch, shadow_stream
from tests import live
from tests.factories import Tenant, login, member_make, tenant_make
from tests.ledger.test_ingest import _event
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.django_db(transaction=True)

DROP = object()


@pytest.fixture
def client() -> redis.Redis:
    client = redis.Redis.from_url(settings.REDIS_URL)
    for stream in (ledger_stream(), cache_stream(), shadow_stream()):
        client.delete(stream, names.dead_letters(stream))
    ensure_group(client)
    return client


def _xadd(client: redis.Redis, stream: str, *events: Any) -> None:
    for event in events:
        client.xadd(stream, {EVENT_FIELD: event if isinstance(event, bytes) else orjson.dumps(event)})


def test_a_poison_entry_is_dead_lettered_and_the_entries_after_it_land(client: redis.Redis) -> None:
    tenant = tenant_make()
    before = [_event(tenant, n) for n in range(3)]
    # Written straight to the stream, past the gateway's cleaning: a project id no integer column holds.
    poison = {**_event(tenant, 99), "project_id": 2**63}
    # Old-style events the consumer cleans itself (defence in depth): they land, fitted to their columns.
    dirty = {**_event(tenant, 98), "end_user": "a\u0000b", "feature": "f" * 500, "served_model": "m" * 300}
    after = [_event(tenant, n) for n in range(3, 40)]
    _xadd(client, ledger_stream(), *before, poison, dirty, *after)

    while ledger_ingest_batch(client=client, consumer="c", block_ms=0, count=500):
        pass

    stored = set(LedgerEntry.objects.values_list("request_id", flat=True))
    assert stored == {e["request_id"] for e in [*before, dirty, *after]}
    row = LedgerEntry.objects.get(request_id=dirty["request_id"])
    assert (row.end_user, row.feature, row.served_model) == ("ab", "f" * 100, "m" * 200)
    dead = client.xrange(dead_letter_stream())
    assert len(dead) == 1
    assert orjson.loads(dead[0][1][EVENT_FIELD])["request_id"] == poison["request_id"]
    assert b"out of range" in dead[0][1][b"error"] or b"DataError" in dead[0][1][b"error"]
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 0 and client.xlen(ledger_stream()) == 0

    alert = Alert.objects.get(organization=tenant.org, kind=AlertKind.DEAD_LETTER)
    assert alert.data["count"] == 1
    # Another one the same day adds to the same alert.
    _xadd(client, ledger_stream(), {**_event(tenant, 97), "organization_id": "not an id"})
    ledger_ingest_batch(client=client, consumer="c", block_ms=0)
    alert.refresh_from_db()
    assert alert.data["count"] == 2 and Alert.objects.filter(kind=AlertKind.DEAD_LETTER).count() == 1


def test_the_dead_letter_count_is_on_the_overview(client: redis.Redis) -> None:
    tenant = tenant_make()
    _xadd(client, ledger_stream(), {**_event(tenant, 1), "project_id": 2**63}, b"[1, 2]")
    ledger_ingest_batch(client=client, consumer="c", block_ms=0)
    assert client.xlen(dead_letter_stream()) == 2  # the unreadable one too, though it names no organisation

    page = login(Client(), tenant.owner).get("/overview/")
    assert page.status_code == 200
    assert b'id="dead-letters"' in page.content and b"Events not stored" in page.content
    # A developer of the organisation sees it too; another organisation's people do not.
    member = member_make(tenant)
    assert b'id="dead-letters"' in login(Client(), member).get("/overview/").content
    outsider = tenant_make().owner
    assert b'id="dead-letters"' not in login(Client(), outsider).get("/overview/").content


def test_the_cache_consumer_dead_letters_what_postgres_refuses(client: redis.Redis) -> None:
    tenant = tenant_make()

    def store(key: str, body: dict[str, Any], **extra: Any) -> dict[bytes, bytes]:
        event = {"type": "store", "project_id": tenant.project.id, "namespace": "", "exact_key": key,
                 "fingerprint": "f" * 64, "model": "gpt-4o-mini", "text": "q", "semantic": False, "ttl": 60,
                 "cost": "0.001", "at": time.time(), **extra}  # fmt: skip
        event = {name: value for name, value in event.items() if value is not DROP}
        return {EVENT_FIELD: orjson.dumps(event), BODY_FIELD: orjson.dumps(body)}

    good = {"choices": [{"message": {"content": "fine"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    client.xadd(cache_stream(), store("a" * 64, good))
    client.xadd(cache_stream(), store("b" * 64, {"choices": [{"message": {"content": "nul \u0000 here"}}]}))
    client.xadd(cache_stream(), store("c" * 64, good, fingerprint=DROP))  # an event without its fingerprint
    client.xadd(cache_stream(), store("d" * 64, good))
    while cache_ingest_batch(client=client, consumer="c", block_ms=0):
        pass
    assert set(CacheEntry.objects.values_list("exact_key", flat=True)) == {"a" * 64, "d" * 64}
    dead = client.xrange(names.dead_letters(cache_stream()))
    assert len(dead) == 2 and all(fields[b"error"] for _id, fields in dead)
    assert Alert.objects.get(organization=tenant.org, kind=AlertKind.DEAD_LETTER).data["count"] == 2


def test_the_shadow_consumer_dead_letters_what_postgres_refuses(client: redis.Redis) -> None:
    tenant = tenant_make()
    rule = rule_make(tenant, name="r", primaries="gpt-4o-mini")

    def comparison(**extra: Any) -> dict[str, Any]:
        return {"kind": "shadow", "request_id": f"req_{uuid.uuid4().hex}", "created_at": time.time(),
                "rule_id": rule.id, "organization_id": tenant.org.id, "project_id": tenant.project.id,
                "primary_model": "gpt-4o-mini", "shadow_model": "gpt-4o", "primary_latency_ms": 5,
                "shadow_latency_ms": 7, "primary_cost": "0.001", "shadow_cost": "0.002", "shadow_status": 200,
                "exact_match": False, "normalized_match": False, "similarity": 0.5, "primary_text": "a",
                "shadow_text": "b", **extra}  # fmt: skip

    good, bad = comparison(), comparison(shadow_status=None, primary_cost={"no": "money"}, rule_id="x")
    dirty = comparison(shadow_text="x\u0000y", primary_latency_ms=2**40, shadow_model="s" * 400)
    _xadd(client, shadow_stream(), good, bad, dirty)
    shadow_ingest_batch(client=client, consumer="c")
    assert set(ShadowComparison.objects.values_list("request_id", flat=True)) == {
        good["request_id"],
        dirty["request_id"],
    }
    row = ShadowComparison.objects.get(request_id=dirty["request_id"])
    assert (row.shadow_text, row.primary_latency_ms, len(row.shadow_model)) == ("xy", 2**31 - 1, 200)
    dead = client.xrange(names.dead_letters(shadow_stream()))
    assert [orjson.loads(fields[EVENT_FIELD])["request_id"] for _id, fields in dead] == [bad["request_id"]]


def test_a_database_that_cannot_take_the_batch_is_not_a_bad_entry(client: redis.Redis) -> None:
    """An error that is not the entries' fault (here a real lock timeout) dead-letters nothing: the batch
    stays pending and is read again."""
    import psycopg
    from django.db import OperationalError, connection

    tenant: Tenant = tenant_make()
    _xadd(client, ledger_stream(), _event(tenant, 1))
    with psycopg.connect(live.test_database_url()) as blocker:
        blocker.execute(f"LOCK TABLE {LedgerEntry._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        try:
            with pytest.raises(OperationalError):
                ledger_ingest_batch(client=client, consumer="c", block_ms=0)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = 0")
    assert client.xlen(dead_letter_stream()) == 0
    assert client.xpending(ledger_stream(), GROUP)["pending"] == 1
    ledger_ingest_batch(client=client, consumer="c", block_ms=0)
    assert LedgerEntry.objects.count() == 1
