"""Writes for finance: importing OpenAI usage exports into the ledger (``imports``) and running export
jobs (``exports``). The public services are re-exported here."""

from __future__ import annotations

from apps.reports.services.exports import (
    export_dir,
    export_job_create,
    export_job_path,
    export_job_run,
    export_jobs_expire,
    export_keep,
)
from apps.reports.services.imports import ImportProblem, ImportRejected, ImportResult, usage_import

__all__ = [
    "ImportProblem",
    "ImportRejected",
    "ImportResult",
    "export_dir",
    "export_job_create",
    "export_job_path",
    "export_job_run",
    "export_jobs_expire",
    "export_keep",
    "usage_import",
]
