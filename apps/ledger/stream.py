"""Reading the gateway's Redis streams (ledger, cache, shadow) through a consumer group.

The gateway appends one event per request (one XADD; names in ``apps.core.names``,
the entry format in ``apps.core.events``); each consumer reads its stream through
the ``ingest`` group, bulk-inserts, and acknowledges only after the insert committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.typing import XReadGroupResponse

from apps.core import names

GROUP = "ingest"
DEAD_LETTER_MAXLEN = 100_000  # a flood of bad events cannot fill Redis


def ensure_group(client: redis.Redis, stream: str, group: str = GROUP) -> None:
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_batch(
    client: redis.Redis,
    stream: str,
    consumer: str,
    *,
    count: int,
    block_ms: int,
    claim_idle_ms: int,
    group: str = GROUP,
) -> list[tuple[bytes, Any]]:
    """Entries to handle next: our own unacknowledged ones, then a dead consumer's, then new ones."""
    own = _stream_entries(client.xreadgroup(group, consumer, {stream: "0"}, count=count))
    if own:
        return own
    _next, claimed, *_ = client.xautoclaim(
        stream, group, consumer, min_idle_time=claim_idle_ms, start_id="0-0", count=count
    )
    if claimed:
        return claimed
    return _stream_entries(client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms or None))


def _stream_entries(reply: XReadGroupResponse) -> list[tuple[bytes, Any]]:
    """The entries of a one-stream XREADGROUP reply: ``[[stream, entries]]``, or empty."""
    # Our clients speak RESP2, where the reply is that list; RESP3 would answer with a dict.
    if not isinstance(reply, list):
        raise TypeError(f"expected a RESP2 XREADGROUP reply, got {type(reply).__name__}")
    return reply[0][1] if reply else []


def acknowledge(
    client: redis.Redis,
    stream: str,
    ids: list[bytes],
    group: str = GROUP,
    *,
    dead_letters: Sequence[tuple[bytes, Any, str]] = (),
) -> None:
    """Mark handled entries done and drop them from the stream (call only after their rows committed).

    ``dead_letters`` (entry id, fields, error) are copied to the stream's dead-letter stream
    (``names.dead_letters``) in the same transaction first, with the entry id and the error, so an
    entry that could not be stored is kept for a person to inspect, never lost. That stream keeps
    about ``DEAD_LETTER_MAXLEN`` entries.
    """
    pipe = client.pipeline(transaction=True)
    for entry_id, fields, error in dead_letters:
        pipe.xadd(
            names.dead_letters(stream),
            {**fields, b"id": entry_id, b"error": error.encode("utf-8", "replace")},
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
    pipe.xack(stream, group, *ids)
    pipe.xdel(stream, *ids)
    pipe.execute()
