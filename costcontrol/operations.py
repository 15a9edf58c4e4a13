"""What an operator asks about the shared parts: the streams, Celery's queues, the roll-ups, the policy version.

Read by the control plane's metrics (``costcontrol/metrics.py``, at scrape time)
and by ``manage.py status``. Each reading is one or two Redis commands or one
small query; none changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from django.conf import settings

from apps.core import names
from apps.ledger.selectors import rollup_lag_seconds

__all__ = ["StreamState", "broker_client", "queue_depths", "redis_client", "rollup_lag_seconds", "stream_states"]
from apps.enforcement.redis_clients import sync_client
from apps.ledger.stream import GROUP

# Kombu's Redis transport keeps a queue's messages of each priority step in its own list.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@dataclass(frozen=True, slots=True)
class StreamState:
    name: str  # ledger, cache or shadow
    length: int
    lag: int | None  # entries the consumer group has not read yet (None: Redis cannot tell)
    pending: int  # read but not acknowledged
    dead_letters: int


def streams() -> dict[str, str]:
    """Each stream the gateway writes and the control plane consumes, by short name."""
    prefix = settings.REDIS_PREFIX
    return {
        "ledger": names.ledger_stream(prefix),
        "cache": names.cache_stream(prefix),
        "shadow": names.shadow_stream(prefix),
    }


def stream_states(client: redis.Redis) -> list[StreamState]:
    states = []
    for short, stream in streams().items():
        pipe = client.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xlen(names.dead_letters(stream))
        length, dead = pipe.execute()
        lag: int | None = None
        pending = 0
        if length:
            try:
                groups = client.xinfo_groups(stream)
            except redis.ResponseError:  # the stream is gone between the two commands
                groups = []
            for group in groups:
                if _text(group.get("name")) == GROUP:
                    lag = group.get("lag")
                    pending = int(group.get("pending") or 0)
        else:
            lag = 0
        states.append(StreamState(short, int(length), lag, pending, int(dead)))
    return states


def celery_queues() -> list[str]:
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    queues.update(route["queue"] for route in settings.CELERY_TASK_ROUTES.values())
    return sorted(queues)


def queue_depths(broker: redis.Redis) -> dict[str, int]:
    """Messages waiting in each Celery queue (not those a worker holds)."""
    prefix = (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("global_keyprefix", "")
    queues = celery_queues()
    pipe = broker.pipeline(transaction=False)
    for queue in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(f"{prefix}{queue}{suffix}")
    counts = pipe.execute()
    step = len(PRIORITY_SUFFIXES)
    return {queue: sum(counts[i * step : (i + 1) * step]) for i, queue in enumerate(queues)}


def policy_version(client: redis.Redis) -> int:
    return int(client.get(names.policy_version(settings.REDIS_PREFIX)) or 0)


def redis_client() -> redis.Redis:
    return sync_client(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def broker_client() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
