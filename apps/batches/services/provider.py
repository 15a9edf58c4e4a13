"""The provider's own Batch API: submit the lines as one batch there, poll it, take its results.

Chosen when every line goes to one OpenAI (or simulated) provider with batch prices; lines
are billed at the batch price with the list price as their counterfactual. Near the deadline,
or when the provider's batch ends with lines unanswered, those lines go to the sync path.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from decimal import Decimal
from typing import Any

import openai
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.batches.jsonl import jsonl_lines
from apps.batches.models import Batch, BatchBackend, BatchLine, BatchStatus, LineStatus
from apps.batches.services.lines import (
    FINAL,
    Resolver,
    batch_finalize,
    commit,
    enqueue,
    result_from_record,
)
from apps.batches.services.reserve import (
    reserve_whole,
    settle_state,
    settle_whole,
)
from apps.core.storable import NotStorable, loads_storable
from apps.providers.models import Provider, ProviderKind
from apps.tenancy.models import Project
from costcontrol.egress import egress_http_client

logger = logging.getLogger(__name__)


BATCH_API_KINDS = (ProviderKind.OPENAI, ProviderKind.SIMULATED)


def provider_client(provider: Provider) -> openai.OpenAI:
    """The SDK for the provider's Files and Batch APIs, over a client that obeys the egress policy."""
    return openai.OpenAI(
        base_url=provider.base_url,
        api_key=provider.secret or "none",
        max_retries=2,
        timeout=120,
        http_client=egress_http_client(timeout=120),
    )


def provider_batch_target(project: Project, lines: list[BatchLine]) -> Provider | None:
    """The provider whose own Batch API can take every line (batch prices), or None for the sync path.

    That is when all lines resolve to one provider that has a Batch API (OpenAI, or the simulator's)
    and a batch price for each model.
    """
    if not settings.BATCH_PROVIDER_BACKEND:
        return None
    resolve = Resolver(project)
    targets = {resolve(str(line.body.get("model"))) for line in lines}
    providers = {t.provider.pk if t.provider else None for t in targets}
    if len(providers) != 1 or None in providers:
        return None
    provider = next(iter(targets)).provider
    assert provider is not None
    if provider.kind not in BATCH_API_KINDS or any(
        t.price is None or not t.price.batch_input_per_mtok for t in targets
    ):
        return None
    return provider


def batch_submit(*, batch_id: str) -> None:
    """Send the pending lines to the provider's Batch API as one batch (once: the row is locked meanwhile)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update(of=("self",)).select_related("provider", "project").get(pk=batch_id)
        if batch.provider_batch_id or batch.provider is None or batch.status != BatchStatus.IN_PROGRESS:
            return
        resolve = Resolver(batch.project)
        pending = list(BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).order_by("line"))

        def batch_prices(line: BatchLine) -> tuple[Decimal, Decimal, str]:
            target = resolve(str(line.body.get("model")))
            assert target.price is not None  # a provider batch is chosen only when every model has batch prices
            return target.price.batch_input_per_mtok, target.price.batch_output_per_mtok, target.model

        if not reserve_whole(batch, pending, batch_prices):
            # The whole batch does not fit a hard budget: run it line by line, each line within the budget.
            batch.backend = BatchBackend.SYNC
            batch.save(update_fields=["backend"])
            transaction.on_commit(lambda: enqueue(batch.pk))
            return
        rows = [
            json.dumps({
                "custom_id": str(line.line), "method": "POST", "url": batch.endpoint,
                "body": {**line.body, "model": resolve(str(line.body.get("model"))).model},
            })
            for line in pending
        ]  # fmt: skip
        client = provider_client(batch.provider)
        try:
            uploaded = client.files.create(
                file=(f"{batch.id}.jsonl", ("\n".join(rows) + "\n").encode()), purpose="batch"
            )
            remote = client.batches.create(
                input_file_id=uploaded.id,
                endpoint=batch.endpoint,  # type: ignore[arg-type]
                completion_window="24h",
                metadata={**(batch.metadata or {}), "costcontrol_batch": batch.id},
            )
        except Exception:
            # No batch at the provider: give the reservation back now. This transaction rolls back,
            # so the next try (batches.resume, every minute) reserves again; kept, it would add up.
            if batch.reservation:
                settle_state(batch.reservation, Decimal(0))
            raise
        batch.provider_batch_id = remote.id
        batch.save(update_fields=["provider_batch_id"])
        BatchLine.objects.filter(pk__in=[line.pk for line in pending]).update(status=LineStatus.SUBMITTED)


def fall_back_to_sync(batch: Batch) -> None:
    """Lines the provider did not finish go back to our sync path."""
    BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).update(status=LineStatus.PENDING)
    Batch.objects.filter(pk=batch.pk).update(backend=BatchBackend.SYNC)
    transaction.on_commit(lambda: enqueue(batch.pk))


def batch_poll(*, batch_id: str, now: dt.datetime | None = None) -> str:
    """Check the provider's batch: take in its results, cancel it, or hand the rest to the sync path.

    When the deadline (``expires_at`` minus ``BATCH_DEADLINE_MARGIN_SECONDS``) comes with lines still
    at the provider, the provider's batch is cancelled and those lines run on the sync path.
    Returns the provider batch's status as seen.
    """
    now = now or timezone.now()
    batch = Batch.objects.select_related("provider", "project", "api_key").get(pk=batch_id)
    if not batch.provider_batch_id or batch.provider is None or batch.status in FINAL:
        return ""
    if not BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).exists():
        return "taken"  # results already in, or handed to the sync path
    client = provider_client(batch.provider)
    remote = client.batches.retrieve(batch.provider_batch_id)
    if remote.status in ("completed", "expired", "cancelled", "failed"):
        take_results(batch, client, remote)
        with transaction.atomic():
            if batch.status == BatchStatus.CANCELLING:
                BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).update(status=LineStatus.CANCELLED)
            elif BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).exists():
                fall_back_to_sync(batch)
    elif batch.status == BatchStatus.CANCELLING:
        remote = client.batches.cancel(batch.provider_batch_id)
        BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).update(status=LineStatus.CANCELLED)
    elif now >= batch.expires_at - dt.timedelta(seconds=settings.BATCH_DEADLINE_MARGIN_SECONDS):
        logger.warning("batch %s: provider batch %s not done near the deadline", batch.pk, batch.provider_batch_id)
        client.batches.cancel(batch.provider_batch_id)
        with transaction.atomic():
            fall_back_to_sync(batch)
    if not BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).exists():
        settle_whole(batch.pk)  # nothing left at the provider: its share of the budget is what it cost
    if not BatchLine.objects.filter(
        batch=batch, status__in=(LineStatus.PENDING, LineStatus.RUNNING, LineStatus.SUBMITTED)
    ).exists():
        batch_finalize(batch_id=batch.pk)
    return str(remote.status)


def take_results(batch: Batch, client: openai.OpenAI, remote: Any) -> None:
    resolve = Resolver(batch.project)
    by_line = {line.line: line for line in BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED)}
    results = []
    for file_id in (remote.output_file_id, remote.error_file_id):
        if not file_id:
            continue
        for number, raw in jsonl_lines(client.files.content(file_id).text):
            if not raw.strip():
                continue
            # The provider's file is hostile input. A record we cannot read, or cannot store, leaves its line
            # submitted, and such lines go back to our sync path below: they are run again, not lost.
            try:
                record = loads_storable(raw)
            except NotStorable as exc:
                logger.warning("batch %s: line %d of the provider's file %s", batch.pk, number, exc)
                continue
            custom_id = record.get("custom_id") if isinstance(record, dict) else None
            line = by_line.get(int(custom_id)) if isinstance(custom_id, str) and custom_id.isdecimal() else None
            if line is None:
                continue
            result = result_from_record(line, resolve(str(line.body.get("model"))), record)
            result.price(batch_prices=True)
            results.append(result)
    commit(batch, Q(status=LineStatus.SUBMITTED), results, BatchBackend.PROVIDER)


def batches_poll() -> int:
    """Poll every unfinished provider batch (a periodic task)."""
    ids = list(
        Batch.objects.filter(status__in=(BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING))
        .exclude(provider_batch_id="")
        .values_list("id", flat=True)
    )
    for batch_id in ids:
        try:
            batch_poll(batch_id=batch_id)
        except openai.OpenAIError:
            logger.exception("could not poll the provider for batch %s", batch_id)
        except Exception:
            # One batch's failure (its provider's answer, say) must not stop the polling of every other
            # organisation's batches after it in this loop.
            logger.exception("polling batch %s failed; the other batches are still polled", batch_id)
    return len(ids)
