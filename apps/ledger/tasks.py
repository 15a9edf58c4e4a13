"""Celery entry points for the ledger: thin wrappers over services."""

from __future__ import annotations

import socket

from celery import shared_task

from apps.ledger.services import ledger_ingest_batch, redis_client, rollups_refresh


@shared_task(name="ledger.rollups_refresh", time_limit=300, soft_time_limit=270)
def rollups_refresh_task() -> int:
    return rollups_refresh()


@shared_task(name="ledger.ingest_stragglers", time_limit=120, soft_time_limit=110)
def ingest_stragglers_task() -> int:
    """Safety net beside the ingest process: take over entries left pending by a dead consumer."""
    client = redis_client()
    total = 0
    while handled := ledger_ingest_batch(client=client, consumer=f"celery-{socket.gethostname()}", block_ms=0):
        total += handled
    return total
