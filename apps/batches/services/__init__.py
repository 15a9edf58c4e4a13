"""Files and batches: upload, check, run every line exactly once into the ledger, finalize.

By sub-domain: ``intake`` (files, new batches, cancelling), ``reserve`` (hard budgets for
lines and whole batches), ``sync`` (our own runner), ``provider`` (the provider's Batch
API), ``offline`` (vLLM's offline runner), and ``lines`` (what every backend shares:
targets, results, ledger rows, finalizing). The public services are re-exported here.
"""

from __future__ import annotations

from apps.batches.services.intake import BatchInputError, batch_cancel, batch_create, file_upload
from apps.batches.services.lines import batch_finalize
from apps.batches.services.offline import batch_run_vllm
from apps.batches.services.provider import batch_poll, batch_submit, batches_poll
from apps.batches.services.sync import batch_run, batches_expire, batches_resume

__all__ = [
    "BatchInputError",
    "batch_cancel",
    "batch_create",
    "batch_finalize",
    "batch_poll",
    "batch_run",
    "batch_run_vllm",
    "batch_submit",
    "batches_expire",
    "batches_poll",
    "batches_resume",
    "file_upload",
]
