"""Cache writes: indexing stored answers in Postgres, hit counts, eviction, purges."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F, OrderBy
from django.utils import timezone

from apps.audit.models import AuditAction, ObjectType
from apps.audit.services import audit_record, audit_saved, audit_snapshot, audit_stored
from apps.cache.models import CacheEntry, CachePolicy, Eviction
from apps.core import names
from apps.core.events import BODY_FIELD, EVENT_FIELD, cache_event_clean, clean_count, clean_id
from apps.ledger.consumer import DeadLetter, dead_letters_report, store_or_bisect
from apps.ledger.stream import acknowledge, ensure_group, read_batch
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)


def cache_stream() -> str:
    return names.cache_stream(settings.REDIS_PREFIX)


def cache_ingest_batch(
    *, client: redis.Redis, consumer: str, count: int = 200, block_ms: int = 1000, claim_idle_ms: int = 30_000
) -> int:
    """Index stored answers (embedding them when semantic) and count hits; ack after commit.

    An event that cannot be read or stored goes to the dead-letter stream (a cache miss
    later, never wrong data); the others are stored.
    """
    stream = cache_stream()
    ensure_group(client, stream)
    entries = read_batch(client, stream, consumer, count=count, block_ms=block_ms, claim_idle_ms=claim_idle_ms)
    if not entries:
        return 0
    stores: dict[tuple[int, str, str], _Store] = {}
    hits: Counter[tuple[int, str, str]] = Counter()
    last_hit: dict[tuple[int, str, str], float] = {}
    dead: list[DeadLetter] = []
    for entry_id, fields in entries:
        if not fields:
            continue
        try:
            event = orjson.loads(fields[EVENT_FIELD])
            if not isinstance(event, dict):
                raise TypeError("a cache event is a JSON object")
            project_id = clean_id(event["project_id"])
            if project_id is None:
                raise ValueError(f"not a project id: {event['project_id']!r}")
            key = (project_id, str(event["namespace"]), str(event["exact_key"]))
            cache_event_clean(event)
            if event["type"] == "store":
                body = orjson.loads(fields[BODY_FIELD])
                if not isinstance(body, dict):
                    raise TypeError("a cached answer is a JSON object")
                # A later store of the same key supersedes an earlier one in this batch.
                stores[key] = _Store(entry_id, fields, event, body)
            elif event["type"] == "hit":
                hits[key] += 1
                last_hit[key] = max(last_hit.get(key, 0.0), float(event["at"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            dead.append((entry_id, fields, f"unreadable: {type(exc).__name__}: {exc}"[:1000]))
    dead += _store_entries(stores)
    with transaction.atomic():
        for key, n in hits.items():
            CacheEntry.objects.filter(project_id=key[0], namespace=key[1], exact_key=key[2]).update(
                hit_count=F("hit_count") + n, last_hit_at=dt.datetime.fromtimestamp(last_hit[key], dt.UTC)
            )
    dead_letters_report(stream=stream, dead=dead, field=EVENT_FIELD)
    acknowledge(client, stream, [entry_id for entry_id, _ in entries], dead_letters=dead)
    return len(entries)


@dataclass(frozen=True, slots=True)
class _Store:
    entry_id: bytes
    fields: dict[Any, Any]
    event: dict[str, Any]
    body: dict[str, Any]


def _store_entries(stores: dict[tuple[int, str, str], _Store]) -> list[DeadLetter]:
    """Insert (or refresh) the stored answers' rows; returns the stores that could not be."""
    if not stores:
        return []
    semantic = [key for key, store in stores.items() if store.event.get("semantic") and store.event.get("text")]
    vectors: dict[tuple[int, str, str], Any] = {}
    if semantic:
        from apps.cache.embedding import local_embedder

        embedder = local_embedder()
        # Text past the embedder's window is never looked up semantically (lookup_vector), so it is not
        # indexed either: such an entry serves exact hits only.
        semantic = [key for key in semantic if embedder.fits(stores[key].event["text"])]
        embedded = embedder.embed([stores[key].event["text"] for key in semantic])
        vectors = dict(zip(semantic, embedded, strict=True))
    rows: list[tuple[_Store, CacheEntry]] = []
    dead: list[DeadLetter] = []
    for key, store in stores.items():
        event, body = store.event, store.body
        try:
            usage = body.get("usage")
            usage = usage if isinstance(usage, dict) else {}
            stored_at = dt.datetime.fromtimestamp(float(event["at"]), dt.UTC)
            row = CacheEntry(
                project_id=key[0],
                namespace=key[1],
                exact_key=key[2],
                fingerprint=event["fingerprint"],
                model=event["model"],
                prompt_text=event.get("text") or "",
                embedding=vectors.get(key),
                response=body,
                prompt_tokens=clean_count(usage.get("prompt_tokens")),
                completion_tokens=clean_count(usage.get("completion_tokens")),
                cost=Decimal(event.get("cost") or "0"),
                expires_at=stored_at + dt.timedelta(seconds=int(event["ttl"])),
            )
        except (KeyError, ValueError, TypeError, ArithmeticError, OverflowError) as exc:
            dead.append((store.entry_id, store.fields, f"unreadable: {type(exc).__name__}: {exc}"[:1000]))
            continue
        rows.append((store, row))
    existing = set(Project.objects.filter(id__in={r.project_id for _s, r in rows}).values_list("id", flat=True))
    refused = store_or_bisect(
        [(store, row) for store, row in rows if row.project_id in existing],  # a project deleted meanwhile has no cache
        lambda chunk: CacheEntry.objects.bulk_create(
            [row for _store, row in chunk],
            update_conflicts=True,
            unique_fields=["project", "namespace", "exact_key"],
            update_fields=[
                "fingerprint", "model", "prompt_text", "embedding", "response", "prompt_tokens",
                "completion_tokens", "cost", "expires_at",
            ],
        ),
    )  # fmt: skip
    return dead + [(store.entry_id, store.fields, error) for (store, _row), error in refused]


def cache_entries_delete(client: redis.Redis, entries: list[tuple[int, int, str, str]]) -> int:
    """Delete rows and their Redis exact entries; ``entries`` are (id, project, namespace, key)."""
    if not entries:
        return 0
    CacheEntry.objects.filter(id__in=[e[0] for e in entries]).delete()
    prefix = settings.REDIS_PREFIX
    keys = [names.cache_entry(prefix, project_id=p, namespace=ns, exact_key=k) for _id, p, ns, k in entries]
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    return len(entries)


def cache_evict(*, client: redis.Redis, now: dt.datetime | None = None) -> int:
    """Drop expired entries, then trim each project to its max entries (LFU or LRU). Idempotent."""
    now = now or timezone.now()
    removed = cache_entries_delete(
        client,
        list(CacheEntry.objects.filter(expires_at__lte=now).values_list("id", "project_id", "namespace", "exact_key")),
    )
    for policy in CachePolicy.objects.filter(feature=""):
        entries = CacheEntry.objects.filter(project_id=policy.project_id)
        surplus = entries.count() - policy.max_entries
        if surplus <= 0:
            continue
        order: list[OrderBy | str]
        if policy.eviction == Eviction.LFU:
            order = [F("hit_count").asc(), F("last_hit_at").asc(nulls_first=True), "created_at"]
        else:
            order = [F("last_hit_at").asc(nulls_first=True), "created_at"]
        victims = list(entries.order_by(*order).values_list("id", "project_id", "namespace", "exact_key")[:surplus])
        removed += cache_entries_delete(client, victims)
    return removed


def cache_purge(*, client: redis.Redis, project: Project, namespace: str | None = None) -> int:
    """Delete a project's entries (one namespace, or all); they are misses from now on."""
    entries = CacheEntry.objects.filter(project=project)
    if namespace is not None:
        entries = entries.filter(namespace=namespace)
    with transaction.atomic():
        removed = cache_entries_delete(client, list(entries.values_list("id", "project_id", "namespace", "exact_key")))
        audit_record(
            action=AuditAction.PURGE,
            obj=project,
            object_type=ObjectType.CACHE_ENTRY,
            object_repr=f"cache of {project.slug}",
            after={"namespace": "(all)" if namespace is None else namespace, "entries_removed": removed},
        )
    return removed


@transaction.atomic
def cache_entry_delete(*, client: redis.Redis, entry: CacheEntry) -> None:
    """Delete one cached answer (a miss from now on)."""
    # Not the entry's text: what end users typed is not for every reader of the audit log.
    label = f"cache entry {entry.pk} ({entry.model}, namespace '{entry.namespace}')"
    audit_record(action=AuditAction.DELETE, obj=entry, before=audit_snapshot(entry), object_repr=label)
    cache_entries_delete(client, [(entry.id, entry.project_id, entry.namespace, entry.exact_key)])


@transaction.atomic
def cache_policy_save(*, policy: CachePolicy) -> CachePolicy:
    """Create or change a project's (or feature's) cache policy; gateways pick it up within a second."""
    before = audit_stored(policy)
    policy.full_clean()
    policy.save()
    audit_saved(obj=policy, before=before)
    return policy
