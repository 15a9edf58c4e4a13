"""Export jobs: big exports run in the background, write a CSV file, and are deleted after a while."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.reports.models import ExportJob, ExportKind, ExportStatus
from apps.reports.selectors.exports import ExportQuery, export_rows
from apps.tenancy.models import Organization
from costcontrol.spreadsheet import csv_lines

logger = logging.getLogger(__name__)


PROGRESS_EVERY = 1000


EXPORT_KEEP = dt.timedelta(days=7)


def export_dir() -> Path:
    return Path(getattr(settings, "REPORTS_EXPORT_DIR", settings.BASE_DIR / "var" / "exports"))


def export_keep() -> dt.timedelta:
    """How long an export job and its file are kept after it finished."""
    keep: dt.timedelta = getattr(settings, "REPORTS_EXPORT_KEEP", EXPORT_KEEP)
    return keep


def export_job_path(job: ExportJob) -> Path:
    return export_dir() / Path(job.file_name).name


def export_job_create(
    *, user: User, organization: Organization, kind: str, query: ExportQuery, enqueue: bool = True
) -> ExportJob:
    """Record an export and hand it to a worker once the row is committed."""
    job = ExportJob(organization=organization, requested_by=user, kind=kind, params=query.to_params())
    job.full_clean()
    job.save()
    if enqueue:
        from apps.reports.tasks import export_job_run_task  # the task module imports this one

        transaction.on_commit(lambda: export_job_run_task.delay(job.pk))
    return job


def export_job_run(*, job: ExportJob, progress_every: int = PROGRESS_EVERY) -> ExportJob:
    """Write the job's CSV under the export directory, saving progress every ``progress_every`` rows.

    Claims the job with an atomic update first, so a redelivered task never
    runs it twice. The file is written beside its final name and renamed when
    complete; a failure marks the job failed and leaves no partial file.
    """
    claimed = ExportJob.objects.filter(pk=job.pk, status=ExportStatus.PENDING).update(
        status=ExportStatus.RUNNING, started_at=timezone.now()
    )
    job.refresh_from_db()
    if not claimed:
        return job
    query = ExportQuery.from_params(job.params)
    name = f"{job.pk}-{query.file_name(kind=job.kind, organization_slug=job.organization.slug)}"
    directory = export_dir()
    directory.mkdir(parents=True, exist_ok=True)
    final, partial = directory / name, directory / f"{name}.part"
    try:
        rows, sized = export_rows(kind=job.kind, user=job.requested_by, organization=job.organization, query=query)
        estimate = sized.count() * (3 if job.kind == ExportKind.FOCUS else 1)
        ExportJob.objects.filter(pk=job.pk).update(rows_total=estimate)
        written = 0
        with partial.open("w", newline="", encoding="utf-8") as handle:
            lines = csv_lines(rows)
            handle.write(next(lines))  # the header
            for line in lines:
                handle.write(line)
                written += 1
                if written % progress_every == 0:
                    ExportJob.objects.filter(pk=job.pk).update(rows_written=written)
        os.replace(partial, final)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        logger.exception("export job %s failed", job.pk)
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        job.refresh_from_db()
        return job
    ExportJob.objects.filter(pk=job.pk).update(
        status=ExportStatus.DONE,
        file_name=name,
        rows_written=written,
        rows_total=written,
        finished_at=timezone.now(),
    )
    job.refresh_from_db()
    return job


def export_jobs_expire(*, now: dt.datetime | None = None) -> int:
    """Delete export jobs that finished more than ``export_keep()`` ago, with their files; returns how many.

    Jobs that never finished (a worker that died) go once they are as old. Then
    any file in the export directory that no job names and that is older than
    the keep period goes too: ``.part`` files of a killed worker, files of jobs
    deleted with their user or organisation. A file being written is minutes
    old, so it is never touched. Safe to run concurrently and repeatedly.
    """
    cutoff = (now or timezone.now()) - export_keep()
    expired = ExportJob.objects.filter(
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    ).values_list("pk", "file_name")
    jobs = list(expired)
    ExportJob.objects.filter(pk__in=[pk for pk, _ in jobs]).delete()
    directory = export_dir()
    for _, name in jobs:
        if name:
            (directory / Path(name).name).unlink(missing_ok=True)
    if directory.is_dir():
        named = set(ExportJob.objects.exclude(file_name="").values_list("file_name", flat=True))
        for path in directory.iterdir():
            if path.is_file() and path.name not in named and path.stat().st_mtime < cutoff.timestamp():
                path.unlink(missing_ok=True)
    return len(jobs)
