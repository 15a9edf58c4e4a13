"""Celery entry points for the ledger: thin wrappers over services."""

from __future__ import annotations

import socket

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.ledger.consumer import drain
from apps.ledger.held_responses import held_responses_ingest_batch
from apps.ledger.held_restore import held_responses_restore
from apps.ledger.partitions import partitions_ensure
from apps.ledger.retention import ledger_retention_apply
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


@shared_task(name="ledger.ingest_held_responses", time_limit=120, soft_time_limit=110)
def held_responses_ingest_task() -> int:
    """Copy the responses gateways hold (Chat-only providers) to Postgres, and drop the deleted ones."""
    client, consumer = redis_client(), f"celery-{socket.gethostname()}"
    return drain(lambda: held_responses_ingest_batch(client=client, consumer=consumer))


@shared_task(name="ledger.restore_held_responses", time_limit=600, soft_time_limit=570)
def held_responses_restore_task() -> int | None:
    """Write held conversations back into Redis when it lost them (``apps.ledger.held_restore``)."""
    return held_responses_restore()


@shared_task(name="ledger.partitions_ensure", time_limit=300, soft_time_limit=270)
def partitions_ensure_task() -> list[str]:
    """Create the ledger's partitions for this month and the next ``LEDGER_PARTITIONS_AHEAD``."""
    return partitions_ensure(now=timezone.now(), ahead=settings.LEDGER_PARTITIONS_AHEAD)


@shared_task(name="ledger.retention_apply", time_limit=3600, soft_time_limit=3500)
def retention_apply_task() -> dict[str, object]:
    result = ledger_retention_apply(now=timezone.now())
    return {"dropped": result.dropped, "deleted": result.deleted, "background_deleted": result.background_deleted}
