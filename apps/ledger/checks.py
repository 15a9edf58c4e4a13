"""Deployment checks for the ledger (``manage.py check --deploy``)."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.core.checks import CheckMessage, Info, Warning

from apps.enforcement.redis_clients import sync_client


def redis_persistence(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The ledger's events wait in a Redis stream until ingested: without persistence, a Redis restart loses them."""
    client = sync_client(settings.REDIS_URL, socket_connect_timeout=2)
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
    except redis.RedisError as exc:  # unreachable, or CONFIG disabled (common on managed Redis)
        return [Info(f"Could not check Redis persistence ({exc}); make sure AOF is on.", id="ledger.I001")]
    finally:
        client.close()
    if appendonly != "yes":
        return [
            Warning(
                "Redis runs without AOF persistence: ledger events not yet ingested are lost if Redis restarts.",
                hint="Set `appendonly yes` (e.g. `appendfsync everysec`) on the Redis in REDIS_URL.",
                id="ledger.W001",
            )
        ]
    return []
