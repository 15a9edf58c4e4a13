"""Celery entry points for trials."""

from __future__ import annotations

import socket

from celery import shared_task

from apps.ledger.services import redis_client
from apps.opportunities.services import trial_ingest_batch, trials_hold_caps


@shared_task(name="opportunities.ingest_trials", time_limit=120, soft_time_limit=100)
def trial_ingest_task() -> int:
    """Store the semantic-cache trial comparisons gateways reported since the last run."""
    client, consumer, total = redis_client(), f"beat-{socket.gethostname()}", 0
    while handled := trial_ingest_batch(client=client, consumer=consumer):
        total += handled
    return total


@shared_task(name="opportunities.hold_trial_caps", time_limit=120, soft_time_limit=100)
def trials_hold_caps_task() -> int:
    """Record each shadow trial's spend; stop those over their daily cap."""
    return trials_hold_caps()
