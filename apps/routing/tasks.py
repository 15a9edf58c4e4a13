"""Celery entry points for routing."""

from __future__ import annotations

import socket

from celery import shared_task

from apps.ledger.services import redis_client
from apps.routing.services import shadow_ingest_batch


@shared_task(name="routing.ingest_shadow", time_limit=120, soft_time_limit=100)
def shadow_ingest_task() -> int:
    """Store the shadow comparisons gateways reported since the last run."""
    client, consumer, total = redis_client(), f"beat-{socket.gethostname()}", 0
    while handled := shadow_ingest_batch(client=client, consumer=consumer):
        total += handled
    return total
