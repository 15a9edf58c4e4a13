"""Export jobs: big CSV exports written by a worker, with progress a page can poll."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import Q


class ExportKind(models.TextChoices):
    LEDGER = "ledger", "Ledger rows"
    ROLLUPS = "rollups", "Aggregated roll-ups"
    FOCUS = "focus", "FOCUS 1.2 cost and usage"


class ExportStatus(models.TextChoices):
    PENDING = "pending", "Waiting for a worker"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ExportJob(models.Model):
    """One export of one organisation's data, scoped to what ``requested_by`` may see when it runs."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=10, choices=ExportKind.choices)
    # The export's query: since/until (ISO 8601), project slug, group_by list, bucket.
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=ExportStatus.choices, default=ExportStatus.PENDING)
    rows_total = models.PositiveIntegerField(null=True, blank=True, help_text="Estimated when the job starts")
    rows_written = models.PositiveIntegerField(default=0)
    # A name inside the export directory (var/exports/ by default), never a path of its own.
    file_name = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["requested_by", "-created_at"], name="export_job_user_recent")]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=ExportKind.values), name="export_job_kind_valid"),
            models.CheckConstraint(condition=Q(status__in=ExportStatus.values), name="export_job_status_valid"),
            models.CheckConstraint(
                condition=~Q(status=ExportStatus.DONE) | ~Q(file_name=""), name="export_job_done_has_file"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} export #{self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status == ExportStatus.DONE:
            return 100
        if not self.rows_total:
            return 0
        return min(99, self.rows_written * 100 // self.rows_total)

    @property
    def period(self) -> str:
        """The exported range for people: dates when it runs midnight to midnight (UTC)."""
        since, until = (dt.datetime.fromisoformat(self.params[k]).astimezone(dt.UTC) for k in ("since", "until"))
        midnight = since.time() == until.time() == dt.time.min
        shape = "%Y-%m-%d" if midnight else "%Y-%m-%d %H:%M"
        return f"{since:{shape}} → {until:{shape}} UTC"

    @property
    def finished(self) -> bool:
        return self.status in (ExportStatus.DONE, ExportStatus.FAILED)
