"""What an operator asks about the shared parts: the streams, Celery's queues, the roll-ups, the policy version.

Read by the control plane's metrics (``costcontrol/metrics.py``, at scrape time)
and by ``manage.py status``. Each reading is one or two Redis commands, one
small query or, when Celery's broker is RabbitMQ, one passive queue declare per
queue; none changes anything. The broker may be the state Redis, another Redis,
or RabbitMQ (``CELERY_BROKER_URL=amqp://…``): its readings never assume Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from django.conf import settings
from kombu import Connection

from apps.core import names
from apps.ledger.selectors import rollup_lag_seconds

__all__ = ["StreamState", "broker_ping", "queue_depths", "redis_client", "rollup_lag_seconds", "stream_states"]
from apps.enforcement.redis_clients import sync_client
from apps.ledger.stream import GROUP

# Kombu's Redis transport keeps a queue's messages of each priority step in its own list.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
REDIS_BROKER_SCHEMES = ("redis", "rediss", "unix")
BROKER_TIMEOUT_SECONDS = 2


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


def broker_is_redis() -> bool:
    return urlsplit(settings.CELERY_BROKER_URL).scheme in REDIS_BROKER_SCHEMES


def broker_address() -> str:
    """The broker's scheme, host, port and vhost or database, without credentials: safe to print."""
    url = urlsplit(settings.CELERY_BROKER_URL)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.hostname or ''}{port}{url.path or '/'}"


def broker_ping() -> None:
    """Raise unless Celery's broker accepts a connection (Redis: a PING; RabbitMQ: an AMQP handshake)."""
    if broker_is_redis():
        client = _redis_broker()
        try:
            client.ping()
        finally:
            client.close()
        return
    with _amqp_broker() as connection:
        connection.connect()


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Celery queue (not those a worker holds)."""
    queues = celery_queues()
    if not broker_is_redis():
        return _amqp_queue_depths(queues)
    prefix = (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("global_keyprefix", "")
    broker = _redis_broker()
    try:
        pipe = broker.pipeline(transaction=False)
        for queue in queues:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(f"{prefix}{queue}{suffix}")
        counts = pipe.execute()
    finally:
        broker.close()
    step = len(PRIORITY_SUFFIXES)
    return {queue: sum(counts[i * step : (i + 1) * step]) for i, queue in enumerate(queues)}


def _amqp_queue_depths(queues: list[str]) -> dict[str, int]:
    depths = {}
    with _amqp_broker() as connection:
        for queue in queues:
            # A passive declare reads the count without creating the queue; for a queue nobody declared
            # yet RabbitMQ answers NOT_FOUND and closes the channel, so each queue gets its own.
            channel = connection.channel()
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except connection.channel_errors:
                depths[queue] = 0
            finally:
                channel.close()
    return depths


def _amqp_broker() -> Connection:
    return Connection(settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT_SECONDS)


def _redis_broker() -> redis.Redis:
    return redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_timeout=BROKER_TIMEOUT_SECONDS, socket_connect_timeout=BROKER_TIMEOUT_SECONDS
    )


def policy_version(client: redis.Redis) -> int:
    return int(client.get(names.policy_version(settings.REDIS_PREFIX)) or 0)


def redis_client() -> redis.Redis:
    return sync_client(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
