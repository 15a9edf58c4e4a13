"""Celery entry points for reports: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from apps.reports import services
from apps.reports.models import ExportJob


@shared_task(name="reports.export_job_run", queue="default", time_limit=30 * 60, soft_time_limit=29 * 60)
def export_job_run_task(job_id: int) -> str:
    job = ExportJob.objects.select_related("organization", "requested_by").get(pk=job_id)
    return services.export_job_run(job=job).status


@shared_task(name="reports.export_jobs_expire", queue="default", time_limit=300, soft_time_limit=270)
def export_jobs_expire_task() -> int:
    return services.export_jobs_expire()
