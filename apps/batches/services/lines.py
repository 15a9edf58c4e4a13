"""Batch lines: where a line goes, what it returned, and writing results to lines and the ledger.

Shared by every backend: the sync path, the provider's Batch API and vLLM's offline runner
all record a line's answer the same way (``commit``) and close the batch the same way
(``batch_finalize``). A line's ledger row has the request id ``<batch id>-<line>``, so a line
re-run after a crash can never be billed twice.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.batches.models import Batch, BatchBackend, BatchFile, BatchLine, BatchStatus, FilePurpose, LineStatus
from apps.core.events import ERROR_CODE_MAX, MODEL_MAX, clean_count, clean_text
from apps.core.pricing import TIER_BATCH, TIER_STANDARD
from apps.core.request import ENDPOINT_PATHS, attribution
from apps.core.responses import usage_counts
from apps.core.storable import without_nul
from apps.ledger.models import LedgerEntry
from apps.providers.models import ModelAlias, Price, Provider
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)


FINAL = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)


@dataclass(frozen=True)
class Target:
    provider: Provider | None
    model: str
    price: Price | None


class Resolver:
    """The model a line names, as the gateway would serve it without rules: alias, else the default provider."""

    def __init__(self, project: Project) -> None:
        self._project = project
        self._cache: dict[str, Target] = {}

    def __call__(self, model: str) -> Target:
        if model not in self._cache:
            self._cache[model] = self._resolve(model)
        return self._cache[model]

    def _resolve(self, model: str) -> Target:
        project = self._project
        alias = ModelAlias.objects.select_related("provider").filter(project=project, alias=model).first()
        if alias is not None:
            provider, served = alias.provider, alias.model
            prices = Price.objects.filter(provider=provider, model=served)
        else:
            served = model
            prices = Price.objects.filter(
                provider__organization_id=project.organization_id, provider__is_active=True, model=model
            )
        today = timezone.now().date()
        candidates = list(
            prices.filter(effective_from__lte=today).select_related("provider").order_by("-effective_from")
        )
        if not candidates:
            return Target(None, served, None)
        default = [p for p in candidates if p.provider_id == project.default_provider_id]
        price = (default or sorted(candidates, key=lambda p: (p.provider_id, -p.effective_from.toordinal())))[0]
        return Target(price.provider, served, price)


@dataclass
class LineResult:
    line_id: int
    line: int
    custom_id: str
    target: Target
    status: int
    body: dict[str, Any]
    latency_ms: int
    cost: Decimal = Decimal(0)
    counterfactual: Decimal = Decimal(0)  # the same tokens at the sync price
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    reasoning_tokens: int = 0

    def price(self, *, batch_prices: bool) -> None:
        """Take the tokens from the answer's usage (Chat's or the Responses API's) and price them (batch or
        sync prices)."""
        usage = self.body.get("usage") if self.status == 200 else None
        price = self.target.price
        if not isinstance(usage, dict) or price is None:
            return
        counts = usage_counts(usage) if "input_tokens" in usage else None
        if counts is not None:
            self.prompt_tokens, self.cached_tokens = clean_count(counts.prompt_tokens), counts.cached_tokens
            self.completion_tokens = clean_count(counts.completion_tokens)
            self.reasoning_tokens = min(counts.reasoning_tokens, self.completion_tokens)
        else:
            details = usage.get("prompt_tokens_details")
            self.prompt_tokens = clean_count(usage.get("prompt_tokens"))
            self.cached_tokens = clean_count(details.get("cached_tokens") if isinstance(details, dict) else 0)
            self.completion_tokens = clean_count(usage.get("completion_tokens"))
            details = usage.get("completion_tokens_details")
            reasoning = clean_count(details.get("reasoning_tokens") if isinstance(details, dict) else 0)
            self.reasoning_tokens = min(reasoning, self.completion_tokens)
        self.counterfactual = price.cost(
            prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens, completion_tokens=self.completion_tokens
        )
        self.cost = (
            price.batch_cost(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)
            if batch_prices
            else self.counterfactual
        )


def result_from_record(line: BatchLine, target: Target, record: dict[str, Any]) -> LineResult:
    """A line's result from one record of a Batch API output or error file."""
    response = record.get("response")
    response = response if isinstance(response, dict) else {}
    body = response.get("body")
    if not isinstance(body, dict):
        body = {"error": record.get("error")}
    status = response.get("status_code")
    # A provider's garbage status (not an HTTP status) counts as its failure.
    status = status if type(status) is int and 100 <= status <= 599 else 500
    return LineResult(line.pk, line.line, line.custom_id, target, status, body, 0)


def commit(batch: Batch, held: Q, results: list[LineResult], backend: str) -> None:
    """Mark the lines still ``held`` (by this worker, or in the provider's batch) done, with their
    ledger rows, in one transaction."""
    now = timezone.now()
    with transaction.atomic():
        kept = []
        for r in results:
            owned = BatchLine.objects.filter(held, pk=r.line_id).update(
                status=LineStatus.DONE if r.status < 400 else LineStatus.FAILED,
                status_code=r.status,
                # An upstream's answer may hold NUL, which jsonb refuses: the commit failed on every try.
                response=without_nul(r.body),
                cost=r.cost,
            )
            if owned:  # else the lease ran out and another worker took the line over: it records it
                kept.append(r)
        key = batch.api_key
        default_feature = key.default_feature if key else ""
        # Attributed by the live rule, so a line's row counts under the feature and end user its
        # reservation was made for.
        users = dict(BatchLine.objects.filter(pk__in=[r.line_id for r in kept]).values_list("pk", "body__user"))
        who = {
            r.line_id: attribution(feature="", end_user="", user=users.get(r.line_id), default_feature=default_feature)
            for r in kept
        }
        LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(
                    request_id=f"{batch.id}-{r.line}",
                    created_at=now,
                    organization_id=batch.project.organization_id,
                    project_id=batch.project_id,
                    api_key_id=batch.api_key_id,
                    provider_id=r.target.provider.id if r.target.provider else None,
                    endpoint="batch." + ENDPOINT_PATHS[batch.endpoint],
                    feature=who[r.line_id][0],
                    end_user=who[r.line_id][1],
                    requested_model=clean_text(r.target.model, MODEL_MAX),
                    served_model=clean_text(r.target.model, MODEL_MAX),
                    prompt_tokens=r.prompt_tokens,
                    cached_tokens=r.cached_tokens,
                    completion_tokens=r.completion_tokens,
                    reasoning_tokens=r.reasoning_tokens,
                    service_tier=TIER_BATCH if backend == BatchBackend.PROVIDER else TIER_STANDARD,
                    cost=r.cost,
                    counterfactual_cost=r.counterfactual,
                    latency_ms=r.latency_ms,
                    status_code=r.status,
                    error_code=error_code(r) if r.status >= 400 else "",
                    route=f"batch:{batch.id}:{backend}",
                )
                for r in kept
            ],
            ignore_conflicts=True,
        )
        Batch.objects.filter(pk=batch.pk).update(
            completed=F("completed") + sum(r.status < 400 for r in kept),
            failed=F("failed") + sum(r.status >= 400 for r in kept),
            cost=F("cost") + sum((r.cost for r in kept), Decimal(0)),
        )


def error_code(result: LineResult) -> str:
    error = result.body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return clean_text(code or "", ERROR_CODE_MAX)


def batch_finalize(*, batch_id: str) -> None:
    """Write the output and error files and close the batch (once, whoever gets here first)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if batch.status in FINAL:
            return
        cancelled = batch.status == BatchStatus.CANCELLING
        output: list[str] = []
        errors: list[str] = []
        for line in BatchLine.objects.filter(batch=batch, status__in=(LineStatus.DONE, LineStatus.FAILED)).order_by(
            "line"
        ):
            record = {
                "id": f"batch_req_{secrets.token_hex(12)}",
                "custom_id": line.custom_id,
                "response": {
                    "status_code": line.status_code,
                    "request_id": f"{batch.id}-{line.line}",
                    "body": line.response,
                },
                "error": None,
            }
            (output if line.status == LineStatus.DONE else errors).append(json.dumps(record))
        expired = BatchLine.objects.filter(batch=batch, status=LineStatus.EXPIRED).order_by("line")
        for line in expired:
            errors.append(json.dumps({
                "id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id, "response": None,
                "error": {"code": "batch_expired",
                          "message": "This request could not be executed before the completion window expired."},
            }))  # fmt: skip
        now = timezone.now()
        batch.finalizing_at = batch.finalizing_at or now
        for lines, field in ((output, "output_file"), (errors, "error_file")):
            if lines:
                content = ("\n".join(lines) + "\n").encode()
                setattr(batch, field, BatchFile.objects.create(
                    project=batch.project, api_key=batch.api_key, purpose=FilePurpose.BATCH_OUTPUT,
                    filename=f"{batch.id}_{field}.jsonl", bytes=len(content), content=content,
                ))  # fmt: skip
        if cancelled:
            batch.status, batch.cancelled_at = BatchStatus.CANCELLED, now
        elif expired.exists():
            batch.status, batch.expired_at = BatchStatus.EXPIRED, now
        else:
            batch.status, batch.completed_at = BatchStatus.COMPLETED, now
        batch.save()


def enqueue(batch_id: str) -> None:
    from apps.batches.tasks import batch_run_task, batch_run_vllm_task

    if Batch.objects.filter(pk=batch_id, backend=BatchBackend.VLLM).exists():
        batch_run_vllm_task.apply_async((batch_id,), queue="gpu")  # on a GPU host
    else:
        batch_run_task.delay(batch_id)
