"""Files and new batches: upload, check every line by the live request contract, choose a backend."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.batches.jsonl import jsonl_lines
from apps.batches.models import (
    Batch,
    BatchBackend,
    BatchFile,
    BatchLine,
    BatchStatus,
    FilePurpose,
    LineStatus,
    could_be_object_id,
)
from apps.batches.services.lines import (
    batch_finalize,
    enqueue,
)
from apps.batches.services.offline import stopped_deployment
from apps.batches.services.provider import batch_poll, provider_batch_target
from apps.core.errors import GatewayError, model_not_allowed
from apps.core.events import clean_text
from apps.core.request import ENDPOINT_PATHS, error_for_line, validate
from apps.core.storable import NotStorable, loads_storable
from apps.keys.models import ApiKey
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)


MAX_REPORTED_ERRORS = 100
CUSTOM_ID_MAX = 512  # BatchLine.custom_id's column
# OpenAI's rules for a batch's metadata: up to 16 pairs of strings, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512


class BatchInputError(Exception):
    """The request itself is wrong (unknown file, wrong purpose…): a 400 for the app."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def file_upload(*, project: Project, api_key: ApiKey | None, purpose: str, filename: str, content: bytes) -> BatchFile:
    if purpose != FilePurpose.BATCH:
        raise BatchInputError("Only purpose 'batch' is supported here.", param="purpose")
    if len(content) > settings.BATCH_MAX_FILE_BYTES:
        raise BatchInputError(f"The file is larger than {settings.BATCH_MAX_FILE_BYTES} bytes.", param="file")
    if not content.strip():
        raise BatchInputError("The file is empty.", param="file")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchInputError("The file must be UTF-8 encoded JSONL.", param="file") from None
    return BatchFile.objects.create(
        project=project, api_key=api_key, purpose=purpose, filename=clean_text(filename, 255) or "upload.jsonl",
        bytes=len(content), content=content,
    )  # fmt: skip


def validate_lines(
    content: bytes, endpoint: str, allowed_models: list[str]
) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """Parse every line; return the lines, or the errors by line number (OpenAI's batch ``errors`` shape).

    Each body is checked by the same contract as a live request (``apps.core.request.validate``), and its
    model against the key's allowed models: a line a live request would get a 400 or 403 for is an error here.
    """
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(number: int, message: str, param: str | None) -> None:
        errors.append({"code": "invalid_request", "message": message, "param": param, "line": number})

    for number, raw in jsonl_lines(content.decode("utf-8")):
        if not raw.strip():
            continue
        try:
            item = loads_storable(raw)
        except NotStorable as exc:
            error(number, f"Line {number} {exc}.", None)
            continue
        if not isinstance(item, dict):
            error(number, f"Line {number} must be a JSON object.", None)
            continue
        custom_id, body = item.get("custom_id"), item.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, f"Line {number} needs a custom_id string.", "custom_id")
        elif len(custom_id) > CUSTOM_ID_MAX:
            error(number, f"Line {number}: custom_id is longer than {CUSTOM_ID_MAX} characters.", "custom_id")
        elif custom_id in seen:
            error(number, f"Line {number}: custom_id '{custom_id[:100]}' is used twice in this file.", "custom_id")
        if item.get("method") != "POST":
            error(number, f"Line {number}: method must be POST.", "method")
        if item.get("url") != endpoint:
            error(number, f"Line {number}: url must be {endpoint}, the batch's endpoint.", "url")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error(number, f"Line {number}: body must be an object with a model.", "body")
        elif body.get("stream"):
            error(number, f"Line {number}: batch requests cannot stream.", "body.stream")
        if isinstance(body, dict) and not (errors and errors[-1]["line"] == number):
            try:
                validate(ENDPOINT_PATHS[endpoint], body)
            except GatewayError as exc:
                errors.append(error_for_line(exc, number))
            else:
                if allowed_models and body["model"] not in allowed_models:
                    errors.append(error_for_line(model_not_allowed(body["model"]), number))
        if isinstance(custom_id, str) and (not errors or errors[-1]["line"] != number):
            seen.add(custom_id)
            lines.append(BatchLine(line=number, custom_id=custom_id, body=body))
    if len(lines) > settings.BATCH_MAX_LINES:
        error(0, f"A batch holds at most {settings.BATCH_MAX_LINES} requests.", None)
    return lines, errors


def checked_metadata(metadata: Any) -> dict[str, str] | None:
    """A batch's metadata held to OpenAI's rules (and without NUL, which Postgres cannot store)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX_PAIRS:
        raise BatchInputError(f"metadata must be an object of at most {METADATA_MAX_PAIRS} pairs.", param="metadata")
    for name, value in metadata.items():
        if not isinstance(value, str) or len(name) > METADATA_MAX_KEY or len(value) > METADATA_MAX_VALUE:
            raise BatchInputError(
                f"metadata keys must be strings of at most {METADATA_MAX_KEY} characters and values strings of "
                f"at most {METADATA_MAX_VALUE}.",
                param="metadata",
            )
        if "\x00" in name or "\x00" in value:
            raise BatchInputError("metadata cannot hold the character \\u0000.", param="metadata")
    return metadata


def batch_create(
    *,
    project: Project,
    api_key: ApiKey | None,
    input_file_id: str,
    endpoint: str,
    completion_window: str = "24h",
    metadata: Any = None,
) -> Batch:
    """Validate every line; a valid batch is queued for the batch workers, an invalid one is ``failed``."""
    metadata = checked_metadata(metadata)
    if endpoint not in ENDPOINT_PATHS:
        raise BatchInputError(f"endpoint must be one of {', '.join(ENDPOINT_PATHS)}.", param="endpoint")
    if completion_window != "24h":
        raise BatchInputError("completion_window must be '24h'.", param="completion_window")
    if not could_be_object_id(input_file_id):
        raise BatchInputError("No batch file with that id in this project.", param="input_file_id")
    source = BatchFile.objects.filter(project=project, pk=input_file_id, purpose=FilePurpose.BATCH).first()
    if source is None:
        raise BatchInputError(f"No batch file with id '{input_file_id}' in this project.", param="input_file_id")
    lines, errors = validate_lines(bytes(source.content), endpoint, api_key.allowed_models if api_key else [])
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            project=project,
            api_key=api_key,
            endpoint=endpoint,
            completion_window=completion_window,
            input_file=source,
            metadata=metadata,
            expires_at=now + dt.timedelta(hours=24),
        )
        if errors:
            batch.status, batch.failed_at = BatchStatus.FAILED, now
            batch.errors = {"object": "list", "data": errors[:MAX_REPORTED_ERRORS]}
            batch.save(update_fields=["status", "failed_at", "errors"])
            return batch
        for line in lines:
            line.batch = batch
        BatchLine.objects.bulk_create(lines, batch_size=2000)
        batch.provider = provider_batch_target(project, lines)
        batch.deployment = None if batch.provider else stopped_deployment(project, lines)
        batch.backend = (
            BatchBackend.PROVIDER if batch.provider else BatchBackend.VLLM if batch.deployment else BatchBackend.SYNC
        )
        batch.status, batch.in_progress_at, batch.total = BatchStatus.IN_PROGRESS, now, len(lines)
        batch.save(update_fields=["status", "in_progress_at", "total", "provider", "deployment", "backend"])
        transaction.on_commit(lambda: enqueue(batch.id))
    return batch


def batch_cancel(*, batch: Batch) -> Batch:
    """Stop taking new lines; the running ones finish, then the batch is finalized as cancelled."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status in (BatchStatus.IN_PROGRESS, BatchStatus.VALIDATING):
            batch.status, batch.cancelling_at = BatchStatus.CANCELLING, timezone.now()
            batch.save(update_fields=["status", "cancelling_at"])
            BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).update(status=LineStatus.CANCELLED)
    if batch.status == BatchStatus.CANCELLING and batch.provider_batch_id:
        batch_poll(batch_id=batch.pk)  # cancels the provider's batch and keeps what it finished
        batch.refresh_from_db()
    in_flight = BatchLine.objects.filter(batch=batch, status__in=(LineStatus.RUNNING, LineStatus.SUBMITTED))
    if batch.status == BatchStatus.CANCELLING and not in_flight.exists():
        batch_finalize(batch_id=batch.pk)
        batch.refresh_from_db()
    return batch
