"""Files and batches, shaped like OpenAI's Files and Batch APIs, owned by a project and the key that made them."""

from __future__ import annotations

import re
import secrets

from django.db import models
from django.db.models import Q


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


# Every file and batch id we issue has this shape ("file-…", "batch_…"), with room to spare.
_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def could_be_object_id(value: str) -> bool:
    """Whether ``value`` may name one of our files or batches; anything else (a NUL, which Postgres
    refuses in a query, or a megabyte of text) is looked up nowhere."""
    return _OBJECT_ID.fullmatch(value) is not None


class FilePurpose(models.TextChoices):
    BATCH = "batch", "Batch input"
    BATCH_OUTPUT = "batch_output", "Batch output"


class BatchFile(models.Model):
    """An uploaded JSONL file, or one we wrote (a batch's output or error file)."""

    id = models.CharField(primary_key=True, max_length=40, default=new_file_id, editable=False)
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="batch_files")
    api_key = models.ForeignKey("keys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    purpose = models.CharField(max_length=20, choices=FilePurpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField()
    # In the database: files are bounded (BATCH_MAX_FILE_BYTES) and this keeps them transactional with their batch.
    content = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "file"
        indexes = [models.Index(fields=["project", "created_at"], name="batchfile_project_time")]
        constraints = [models.CheckConstraint(condition=Q(purpose__in=FilePurpose.values), name="file_purpose_valid")]

    def __str__(self) -> str:
        return f"{self.id} {self.filename}"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class BatchBackend(models.TextChoices):
    SYNC = "sync", "Sync path, under a concurrency cap (list prices)"
    PROVIDER = "provider", "The provider's Batch API (batch prices)"
    VLLM = "vllm", "vLLM run-batch on a stopped self-hosted deployment"


class Batch(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_batch_id, editable=False)
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="batches")
    api_key = models.ForeignKey("keys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=10, default="24h")
    input_file = models.ForeignKey(BatchFile, on_delete=models.PROTECT, related_name="+")
    output_file = models.ForeignKey(BatchFile, null=True, on_delete=models.SET_NULL, related_name="+")
    error_file = models.ForeignKey(BatchFile, null=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=20, choices=BatchStatus.choices, default=BatchStatus.VALIDATING)
    backend = models.CharField(max_length=20, choices=BatchBackend.choices, default=BatchBackend.SYNC)
    # The provider's own batch, when the lines run on its Batch API (``backend=provider``).
    provider = models.ForeignKey(
        "providers.Provider", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    provider_batch_id = models.CharField(max_length=100, blank=True)
    # The budget reservation for all lines sent at once (provider or vLLM backends), settled when they end.
    reservation = models.JSONField(null=True, blank=True)
    # The self-hosted deployment whose model runs the lines offline (``backend=vllm``).
    deployment = models.ForeignKey(
        "deployments.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    errors = models.JSONField(null=True, blank=True, help_text="Validation errors, by line")
    metadata = models.JSONField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["project", "created_at"], name="batch_project_time")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=BatchStatus.values), name="batch_status_valid"),
            models.CheckConstraint(condition=Q(completed__lte=models.F("total")), name="batch_counts_consistent"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class LineStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUBMITTED = "submitted"  # in the provider's batch
    EXPIRED = "expired"  # not run within the batch's window
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchLine(models.Model):
    """One request of a batch. A worker claims lines (``running``, with a lease), runs them and
    marks them done in the same transaction that writes their ledger rows."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    line = models.PositiveIntegerField(help_text="1-based line number in the input file")
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=10, choices=LineStatus.choices, default=LineStatus.PENDING)
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    cost = models.DecimalField(max_digits=18, decimal_places=10, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "line"], name="batch_line_unique"),
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batch_custom_id_unique"),
            models.CheckConstraint(condition=Q(status__in=LineStatus.values), name="batch_line_status_valid"),
        ]
        indexes = [models.Index(fields=["batch", "status", "line"], name="batchline_claim")]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.line}"
