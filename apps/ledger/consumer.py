"""What the stream consumers (ledger, cache and shadow ingest) share: the loop, and never stopping for one entry.

A consumer reads a batch of entries, turns each into a row and inserts the rows
in bulk. An entry that cannot be read, or whose row the database refuses (too
long, out of range, a NUL, a broken reference), must not stop the consumer: it
would re-read the same batch forever and every tenant's events would pile up
behind it. So the batch is bisected until the bad entries stand alone; the good
ones are inserted, the bad ones go to the stream's dead-letter stream with their
error, and each one's organisation gets an alert (once a day, with a count).
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from django.db import DataError, IntegrityError, close_old_connections, connections, transaction
from django.dispatch import Signal
from django.utils import timezone

from apps.core import names
from apps.core.events import clean_id
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a bad entry can make the database (or the adapter before it) raise. Anything else, e.g. a
# connection lost (OperationalError), is not the entry's fault: it propagates and the batch stays
# pending, to be read again.
ENTRY_ERRORS: tuple[type[Exception], ...] = (DataError, IntegrityError, ValueError, TypeError, ArithmeticError)

# How long a running consumer keeps its database connection, in seconds. It commits batches many times a
# second for days; with the web's CONN_MAX_AGE (default 0: a connection per request), the
# close_old_connections() after each batch closed it, so every batch paid for a new one: a Postgres backend
# forked and authenticated, and the partitioned ledger's catalog read again. Under load on the dev box that
# was ~40 connections a second, costing more CPU than the rows themselves (README, Sizing).
CONSUMER_CONN_MAX_AGE = 600

# (entry id, fields as read, why it could not be stored)
DeadLetter = tuple[bytes, dict[Any, Any], str]

# Sent once per organisation whose entries a batch dead-lettered, with ``organization_id``, ``stream``,
# ``count``, ``error`` (the last one) and ``day``: the alerts app (apps.budgets) tells the organisation.
# A signal, because alerts build on the ledger, not the other way round.
entries_dead_lettered = Signal()


def consume_until_stopped(
    step: Callable[[int], int], *, once: bool, block_ms: int, batch_size: int = 0, linger_ms: int = 0
) -> int:
    """Call ``step(block_ms)`` until SIGTERM/SIGINT, or until a pass finds nothing when ``once``.

    ``step`` handles one batch and returns how many entries it handled; with ``once``
    it is called without blocking. Returns the total handled.

    ``linger_ms``: after a batch smaller than ``batch_size``, wait this long before reading again, so that
    under steady traffic the next batch has gathered more entries. A read returns as soon as one entry is
    there, so at a few thousand requests a second batches were a few entries each, and the cost of a batch
    (the stream read, a transaction, the acknowledgement) was paid nearly per row. A backlog is read in
    full batches, without waiting.
    """
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not once:
        keep_connections(CONSUMER_CONN_MAX_AGE)
    total = 0
    while not stopping:
        handled = step(0 if once else block_ms)
        total += handled
        close_old_connections()
        if once and handled == 0:
            break
        if not once and linger_ms and 0 < handled < batch_size:
            time.sleep(linger_ms / 1000)
    return total


def keep_connections(max_age: int) -> None:
    """Let this process keep each database connection for ``max_age`` seconds where its settings close it
    after every batch, with Django's health check before a kept one is used again: a connection that broke
    between batches (Postgres restarted) is replaced, not raised as the next batch's error.

    For a consumer's own process only: it changes the process's database settings.
    """
    for alias in connections:
        settings_dict = connections[alias].settings_dict
        if not settings_dict.get("CONN_MAX_AGE"):
            settings_dict["CONN_MAX_AGE"] = max_age
            settings_dict["CONN_HEALTH_CHECKS"] = True


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector for one batch.

    A batch of 2,000 entries allocates tens of thousands of short-lived dicts and tuples, which
    set off the collector hundreds of times; each run walks what is alive, Django's heap included.
    Measured on bench_ingest: ~400 collections per 100,000 rows, 0.8 s over 200,000 rows (~4 µs a
    row) on a busy box. Reference counting frees the batch's objects as before; cycles, if any, wait for
    the next collection.
    """
    if not gc.isenabled():  # already paused by a caller: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def store_or_bisect(items: Sequence[T], insert: Callable[[Sequence[T]], object]) -> list[tuple[T, str]]:
    """Insert ``items`` in one transaction; when the database refuses them, split in halves and try each.

    Returns the items that fail on their own, each with its error. Errors that are not a bad
    item's (``ENTRY_ERRORS``) propagate.
    """
    if not items:
        return []
    try:
        with transaction.atomic():
            insert(items)
        return []
    except ENTRY_ERRORS as exc:
        if len(items) == 1:
            return [(items[0], f"{type(exc).__name__}: {exc}"[:1000])]
    middle = len(items) // 2
    return store_or_bisect(items[:middle], insert) + store_or_bisect(items[middle:], insert)


def dead_letters_report(*, stream: str, dead: Sequence[DeadLetter], field: bytes) -> None:
    """Log each dead letter and announce them once per organisation (``entries_dead_lettered``: an alert).

    The organisation comes from the entry's ``organization_id``, else its project's; an entry
    too broken to name either is only logged (and kept in the dead-letter stream).
    """
    if not dead:
        return
    orgs: Counter[int] = Counter()
    errors: dict[int, str] = {}
    projects: dict[int, list[str]] = {}
    for entry_id, fields, error in dead:
        logger.error(
            "%s entry %r could not be stored (%s); moved to %s", stream, entry_id, error, names.dead_letters(stream)
        )
        event = _event(fields, field)
        org_id, project_id = clean_id(event.get("organization_id")), clean_id(event.get("project_id"))
        if org_id is not None:
            orgs[org_id] += 1
            errors[org_id] = error
        elif project_id is not None:
            projects.setdefault(project_id, []).append(error)
    for project_id, org_id in Project.objects.filter(id__in=projects).values_list("id", "organization_id"):
        orgs[org_id] += len(projects[project_id])
        errors[org_id] = projects[project_id][-1]
    for org_id, count in orgs.items():
        entries_dead_lettered.send(
            sender=dead_letters_report,
            organization_id=org_id,
            stream=stream,
            count=count,
            error=errors[org_id],
            day=timezone.now().date(),
        )


def _event(fields: dict[Any, Any], field: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(fields[field])
    except (KeyError, TypeError, orjson.JSONDecodeError):
        return {}
    return event if isinstance(event, dict) else {}


def parsed_entries(
    entries: Sequence[tuple[bytes, Any]], parse: Callable[[Any], T], field: bytes, dead: list[DeadLetter]
) -> Iterator[tuple[bytes, dict[Any, Any], T]]:
    """Each entry's ``field`` as JSON through ``parse``, one at a time, so a consumer can store what it has
    while it parses the rest; the entries it refuses are appended to ``dead``. Entries deleted from the
    stream while pending (no fields) are neither."""
    for entry_id, fields in entries:
        if not fields:
            continue
        try:
            item = (entry_id, fields, parse(orjson.loads(fields[field])))
        # OSError: datetime.fromtimestamp refuses a time out of the platform's range with it.
        except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError, OSError) as exc:
            dead.append((entry_id, fields, f"unreadable: {type(exc).__name__}: {exc}"[:1000]))
            continue
        yield item


def parse_entries(
    entries: Sequence[tuple[bytes, Any]], parse: Callable[[Any], T], field: bytes
) -> tuple[list[tuple[bytes, dict[Any, Any], T]], list[DeadLetter]]:
    """``parsed_entries`` all at once: (what it made, the entries it refused as dead letters)."""
    dead: list[DeadLetter] = []
    return list(parsed_entries(entries, parse, field, dead)), dead


def drain(batch: Callable[[], int]) -> int:
    """Call ``batch`` until it finds nothing; how many entries it handled in all (a periodic task's body)."""
    total = 0
    while handled := batch():
        total += handled
    return total
