"""Celery entry points for batches (queue ``batch``)."""

from __future__ import annotations

import os
import socket

from celery import shared_task

from apps.batches.services import batch_run, batch_run_vllm, batches_poll, batches_resume


@shared_task(name="batches.run", acks_late=True, time_limit=6 * 3600, soft_time_limit=6 * 3600 - 60)
def batch_run_task(batch_id: str) -> int:
    return batch_run(batch_id=batch_id, worker=f"{socket.gethostname()}:{os.getpid()}")


@shared_task(name="batches.resume", time_limit=120, soft_time_limit=100)
def batches_resume_task() -> int:
    """Re-queue batches with unclaimed lines, or lines whose worker's lease ran out (it died)."""
    return batches_resume()


@shared_task(name="batches.poll", time_limit=600, soft_time_limit=570)
def batches_poll_task() -> int:
    """Take in results of the batches running on a provider's Batch API; apply the deadline fallback."""
    return batches_poll()


@shared_task(name="batches.run_vllm", acks_late=True, time_limit=12 * 3600, soft_time_limit=12 * 3600 - 60)
def batch_run_vllm_task(batch_id: str) -> int:
    """``vllm run-batch`` on a GPU host (sent to the ``gpu`` queue); a redelivery re-runs what is left."""
    return batch_run_vllm(batch_id=batch_id)
