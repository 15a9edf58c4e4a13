"""Files and batches: upload, validate, run every line exactly once into the ledger, finalize.

Lines run on the sync path: a worker claims a chunk of pending lines (a lease,
so a dead worker's lines are taken over), sends them to the provider with a
concurrency cap (``BATCH_SYNC_CONCURRENCY``) so live traffic keeps its share
of the provider's rate limits, and marks them done in the same transaction
that writes their ledger rows. A line's ledger row has the request id
``<batch id>-<line>``, so a line re-run after a crash can never be billed twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from psycopg import sql

from apps.batches import budget
from apps.batches.budget import BatchBudgets
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
from apps.core.egress_http import EgressConnector
from apps.core.errors import GatewayError, model_not_allowed
from apps.core.events import ERROR_CODE_MAX, MODEL_MAX, clean_count, clean_text
from apps.core.pricing import MTOK, token_cost
from apps.core.request import attribution, error_for_line, validate
from apps.deployments import conf as deployments_conf
from apps.deployments import vllm
from apps.deployments.models import Deployment, DeploymentRun, DeploymentStatus
from apps.deployments.services import price_per_mtok
from apps.keys.models import ApiKey
from apps.ledger.models import LedgerEntry
from apps.providers.models import ModelAlias, Price, Provider, ProviderKind
from apps.tenancy.models import Project
from costcontrol.egress import egress_http_client, egress_policy

logger = logging.getLogger(__name__)

ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
FINAL = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)
MICRO = Decimal("0.000001")
MAX_REPORTED_ERRORS = 100
BATCH_API_KINDS = (ProviderKind.OPENAI, ProviderKind.SIMULATED)


class BatchInputError(Exception):
    """The request itself is wrong (unknown file, wrong purpose…): a 400 for the app."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- files --------------------------------------------------------------------


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
        project=project, api_key=api_key, purpose=purpose, filename=filename[:255], bytes=len(content), content=content
    )


# --- creating a batch ---------------------------------------------------------------


def _validate_lines(
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

    for number, raw in enumerate(content.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            error(number, f"Line {number} is not valid JSON: {exc.msg}.", None)
            continue
        if not isinstance(item, dict):
            error(number, f"Line {number} must be a JSON object.", None)
            continue
        custom_id, body = item.get("custom_id"), item.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, f"Line {number} needs a custom_id string.", "custom_id")
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
                validate(ENDPOINTS[endpoint], body)
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


def batch_create(
    *,
    project: Project,
    api_key: ApiKey | None,
    input_file_id: str,
    endpoint: str,
    completion_window: str = "24h",
    metadata: dict[str, str] | None = None,
) -> Batch:
    """Validate every line; a valid batch is queued for the batch workers, an invalid one is ``failed``."""
    if endpoint not in ENDPOINTS:
        raise BatchInputError(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if completion_window != "24h":
        raise BatchInputError("completion_window must be '24h'.", param="completion_window")
    if not could_be_object_id(input_file_id):
        raise BatchInputError("No batch file with that id in this project.", param="input_file_id")
    source = BatchFile.objects.filter(project=project, pk=input_file_id, purpose=FilePurpose.BATCH).first()
    if source is None:
        raise BatchInputError(f"No batch file with id '{input_file_id}' in this project.", param="input_file_id")
    lines, errors = _validate_lines(bytes(source.content), endpoint, api_key.allowed_models if api_key else [])
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
        batch.provider = _provider_batch_target(project, lines)
        batch.deployment = None if batch.provider else _stopped_deployment(project, lines)
        batch.backend = (
            BatchBackend.PROVIDER if batch.provider else BatchBackend.VLLM if batch.deployment else BatchBackend.SYNC
        )
        batch.status, batch.in_progress_at, batch.total = BatchStatus.IN_PROGRESS, now, len(lines)
        batch.save(update_fields=["status", "in_progress_at", "total", "provider", "deployment", "backend"])
        transaction.on_commit(lambda: _enqueue(batch.id))
    return batch


def _provider_batch_target(project: Project, lines: list[BatchLine]) -> Provider | None:
    """The provider whose own Batch API can take every line (batch prices), or None for the sync path.

    That is when all lines resolve to one provider that has a Batch API (OpenAI, or the simulator's)
    and a batch price for each model.
    """
    if not settings.BATCH_PROVIDER_BACKEND:
        return None
    resolve = _Resolver(project)
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


def _budgets(batch: Batch) -> BatchBudgets:
    project = batch.project
    return BatchBudgets(
        organization_id=project.organization_id, project_id=project.pk, team_id=project.team_id, key=batch.api_key
    )


def _reserve_whole(
    batch: Batch, lines: list[BatchLine], prices: Callable[[BatchLine], tuple[Decimal, Decimal, str]]
) -> bool:
    """Reserve the worst case of all ``lines`` at once (provider or vLLM backends); False when a hard budget
    has no room for it. The reservation is kept on the batch and settled by ``_settle_whole``."""
    budgets = _budgets(batch)
    if not budgets.any:
        return True
    total, tokens_total, applying = Decimal(0), 0, {}
    for line in lines:
        input_per_mtok, output_per_mtok, model = prices(line)
        usd, tokens_ = budget.worst_case(
            ENDPOINTS[batch.endpoint], line.body, model=model, input_per_mtok=input_per_mtok,
            output_per_mtok=output_per_mtok,
        )  # fmt: skip
        total, tokens_total = total + usd, tokens_total + tokens_
        applying.update({b.id: b for b in budgets.applying(line.body)})
    if not applying:
        return True

    async def run() -> Any:
        async with budget.limiter() as limit:
            return await budget.reserve(
                limit, request_id=batch.pk, budgets=list(applying.values()), usd=total, tokens_=tokens_total
            )

    reserved = asyncio.run(run())
    if isinstance(reserved, dict):
        return False
    Batch.objects.filter(pk=batch.pk).update(reservation=budget.admission_state(reserved))
    batch.reservation = budget.admission_state(reserved)
    return True


def _settle_whole(batch_id: str) -> None:
    """Settle a whole-batch reservation to what its lines really cost (once)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update(of=("self",)).get(pk=batch_id)
        state, batch.reservation = batch.reservation, None
        if not state:
            return
        batch.save(update_fields=["reservation"])
        spent = sum(BatchLine.objects.filter(batch=batch).values_list("cost", flat=True), Decimal(0))
    _settle_state(state, spent)


def _settle_state(state: dict[str, Any], spent: Decimal) -> None:
    """Settle a whole-batch reservation (as kept on the batch) to ``spent``."""

    async def run() -> None:
        async with budget.limiter() as limit:
            await limit.settle(budget.admission_from(state), actual_usd=spent, actual_tokens=0)

    asyncio.run(run())


def _enqueue(batch_id: str) -> None:
    from apps.batches.tasks import batch_run_task, batch_run_vllm_task

    if Batch.objects.filter(pk=batch_id, backend=BatchBackend.VLLM).exists():
        batch_run_vllm_task.apply_async((batch_id,), queue="gpu")  # on a GPU host
    else:
        batch_run_task.delay(batch_id)


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


# --- running ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    provider: Provider | None
    model: str
    price: Price | None


class _Resolver:
    """The model a line names, as the gateway would serve it without rules: alias, else the default provider."""

    def __init__(self, project: Project) -> None:
        self._project = project
        self._cache: dict[str, _Target] = {}

    def __call__(self, model: str) -> _Target:
        if model not in self._cache:
            self._cache[model] = self._resolve(model)
        return self._cache[model]

    def _resolve(self, model: str) -> _Target:
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
            return _Target(None, served, None)
        default = [p for p in candidates if p.provider_id == project.default_provider_id]
        price = (default or sorted(candidates, key=lambda p: (p.provider_id, -p.effective_from.toordinal())))[0]
        return _Target(price.provider, served, price)


_CLAIM_SQL = sql.SQL(
    """
    UPDATE {lines} SET status = %s, claimed_by = %s, claimed_at = now(), attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM {lines}
        WHERE batch_id = %s AND (status = %s OR (status = %s AND claimed_at < now() - %s * interval '1 second'))
        ORDER BY line LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING id, line, custom_id, body
    """
).format(lines=sql.Identifier(BatchLine._meta.db_table))


def _claim(batch_id: str, worker: str, count: int) -> list[tuple[int, int, str, dict[str, Any]]]:
    """Take up to ``count`` lines: pending ones, or running ones whose worker's lease ran out."""
    params: list[str | int] = [
        LineStatus.RUNNING, worker, batch_id, LineStatus.PENDING, LineStatus.RUNNING,
        settings.BATCH_LEASE_SECONDS, count,
    ]  # fmt: skip
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        rows = cursor.fetchall()
    return [(row[0], row[1], row[2], row[3] if isinstance(row[3], dict) else json.loads(row[3])) for row in rows]


@dataclass
class _Result:
    line_id: int
    line: int
    custom_id: str
    target: _Target
    status: int
    body: dict[str, Any]
    latency_ms: int
    cost: Decimal = Decimal(0)
    counterfactual: Decimal = Decimal(0)  # the same tokens at the sync price
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def price(self, *, batch_prices: bool) -> None:
        """Take the tokens from the answer's usage and price them (batch or sync prices)."""
        usage = self.body.get("usage") if self.status == 200 else None
        price = self.target.price
        if not isinstance(usage, dict) or price is None:
            return
        details = usage.get("prompt_tokens_details")
        self.prompt_tokens = clean_count(usage.get("prompt_tokens"))
        self.cached_tokens = clean_count(details.get("cached_tokens") if isinstance(details, dict) else 0)
        self.completion_tokens = clean_count(usage.get("completion_tokens"))
        self.counterfactual = price.cost(
            prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens, completion_tokens=self.completion_tokens
        )
        self.cost = (
            price.batch_cost(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)
            if batch_prices
            else self.counterfactual
        )


async def _send(
    http: aiohttp.ClientSession, endpoint: str, target: _Target, claimed: tuple[int, int, str, dict[str, Any]]
) -> _Result:
    line_id, number, custom_id, body = claimed
    started = time.perf_counter()
    if target.provider is None:
        error = {"message": f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}  # fmt: skip
        return _Result(line_id, number, custom_id, target, 404, {"error": error}, 0)
    provider = target.provider
    headers = {"Authorization": f"Bearer {provider.secret}"} if provider.secret else {}
    try:
        url = f"{provider.base_url.rstrip('/')}{endpoint[3:]}"
        async with http.post(
            url, json={**body, "model": target.model}, headers=headers, allow_redirects=False
        ) as response:
            if 300 <= response.status < 400:
                raise aiohttp.ClientError(f"it answered {response.status} (a redirect), and redirects are not followed")
            status, data = response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        status, data = 502, {"error": {"message": f"Could not reach the provider: {exc}.", "type": "api_error",
                                       "param": None, "code": "upstream_unavailable"}}  # fmt: skip
    latency = int((time.perf_counter() - started) * 1000)
    result = _Result(line_id, number, custom_id, target, status, data if isinstance(data, dict) else {}, latency)
    result.price(batch_prices=False)
    return result


async def _send_all(
    batch_id: str,
    endpoint: str,
    targets: list[_Target],
    claimed: list[tuple[int, int, str, dict[str, Any]]],
    budgets: BatchBudgets,
) -> list[_Result]:
    """Send a chunk of lines, at most ``BATCH_SYNC_CONCURRENCY`` at a time, each within the hard budgets."""
    gate = asyncio.Semaphore(max(settings.BATCH_SYNC_CONCURRENCY, 1))
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS)

    async def one(http: aiohttp.ClientSession, target: _Target, line: tuple[int, int, str, dict[str, Any]]) -> _Result:
        async with gate:
            try:
                # Lines are checked when the batch is made; a line stored before that check existed is
                # answered as a live request would be, never sent (nor left to stop its chunk).
                validate(ENDPOINTS[endpoint], line[3])
            except GatewayError as exc:
                return _Result(line[0], line[1], line[2], target, exc.status, json.loads(exc.body()), 0)
            applying = budgets.applying(line[3]) if limit is not None and target.price is not None else []
            if not applying or target.price is None or limit is None:
                return await _send(http, endpoint, target, line)
            usd, tokens_ = budget.worst_case(
                ENDPOINTS[endpoint],
                line[3],
                model=target.model,
                input_per_mtok=target.price.input_per_mtok,
                output_per_mtok=target.price.output_per_mtok,
            )
            reserved = await budget.reserve(
                limit, request_id=f"{batch_id}-{line[1]}", budgets=applying, usd=usd, tokens_=tokens_
            )
            if isinstance(reserved, dict):  # a hard budget has no room left: refused like a live request
                return _Result(line[0], line[1], line[2], target, 429, reserved, 0)
            result = await _send(http, endpoint, target, line)
            await limit.settle(
                reserved, actual_usd=result.cost, actual_tokens=result.prompt_tokens + result.completion_tokens
            )
            return result

    async with (
        budget.limiter() if budgets.any else nullcontext() as limit,
        aiohttp.ClientSession(timeout=timeout, connector=EgressConnector(egress_policy())) as http,
    ):
        return list(await asyncio.gather(*(one(http, t, c) for t, c in zip(targets, claimed, strict=True))))


def _commit(batch: Batch, held: Q, results: list[_Result], backend: str) -> None:
    """Mark the lines still ``held`` (by this worker, or in the provider's batch) done, with their
    ledger rows, in one transaction."""
    now = timezone.now()
    with transaction.atomic():
        kept = []
        for r in results:
            owned = BatchLine.objects.filter(held, pk=r.line_id).update(
                status=LineStatus.DONE if r.status < 400 else LineStatus.FAILED,
                status_code=r.status,
                response=r.body,
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
                    endpoint="batch." + ENDPOINTS[batch.endpoint],
                    feature=who[r.line_id][0],
                    end_user=who[r.line_id][1],
                    requested_model=clean_text(r.target.model, MODEL_MAX),
                    served_model=clean_text(r.target.model, MODEL_MAX),
                    prompt_tokens=r.prompt_tokens,
                    cached_tokens=r.cached_tokens,
                    completion_tokens=r.completion_tokens,
                    cost=r.cost,
                    counterfactual_cost=r.counterfactual,
                    latency_ms=r.latency_ms,
                    status_code=r.status,
                    error_code=_error_code(r) if r.status >= 400 else "",
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


def _error_code(result: _Result) -> str:
    error = result.body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return clean_text(code or "", ERROR_CODE_MAX)


def batch_run(*, batch_id: str, worker: str, chunk: int = 64) -> int:
    """Run the batch's lines until none is left to claim; returns how many lines this call ran."""
    batch = Batch.objects.select_related("project", "api_key").filter(pk=batch_id).first()
    if batch is None:
        logger.warning("batch %s does not exist (deleted with its project?); nothing to run", batch_id)
        return 0
    if batch.status not in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        return 0
    if batch.backend == BatchBackend.PROVIDER:
        if not batch.provider_batch_id:
            batch_submit(batch_id=batch_id)
        batch_poll(batch_id=batch_id)
        return 0
    resolve = _Resolver(batch.project)
    budgets = _budgets(batch)
    handled = 0
    while True:
        closing = Q(status=BatchStatus.CANCELLING) | Q(expires_at__lte=timezone.now())
        if Batch.objects.filter(closing, pk=batch_id).exists():
            break  # cancelled, or past its window: batches_expire closes it
        claimed = _claim(batch_id, worker, chunk)
        if not claimed:
            break
        targets = [resolve(str(c[3].get("model"))) for c in claimed]  # SQL stays outside the event loop
        results = asyncio.run(_send_all(batch_id, batch.endpoint, targets, claimed, budgets))
        _commit(batch, Q(status=LineStatus.RUNNING, claimed_by=worker), results, BatchBackend.SYNC)
        handled += len(results)
    if not BatchLine.objects.filter(batch_id=batch_id, status__in=(LineStatus.PENDING, LineStatus.RUNNING)).exists():
        batch_finalize(batch_id=batch_id)
    return handled


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


def batches_expire(*, now: dt.datetime | None = None) -> int:
    """Close the batches whose 24 h window has passed: lines not run yet expire (as OpenAI's do), the
    finished ones keep their results. Returns how many batches expired."""
    now = now or timezone.now()
    stale = now - dt.timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    expired = 0
    due = Batch.objects.filter(status=BatchStatus.IN_PROGRESS, expires_at__lte=now).values_list("id", flat=True)
    for batch_id in list(due):
        with transaction.atomic():
            left = BatchLine.objects.filter(batch_id=batch_id).filter(
                Q(status=LineStatus.PENDING) | Q(status=LineStatus.RUNNING, claimed_at__lt=stale)
            )
            count = left.update(status=LineStatus.EXPIRED)
            Batch.objects.filter(pk=batch_id).update(failed=F("failed") + count)
        in_flight = (LineStatus.RUNNING, LineStatus.SUBMITTED)
        if not BatchLine.objects.filter(batch_id=batch_id, status__in=in_flight).exists():
            batch_finalize(batch_id=batch_id)
            expired += 1
    return expired


def batches_resume() -> int:
    """Expire batches past their window, then queue a run for every unfinished batch that has lines
    nobody holds (new, or a dead worker's)."""
    batches_expire()
    stale = timezone.now() - dt.timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    waiting = (
        BatchLine.objects.filter(batch__status__in=(BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING))
        .filter(Q(status=LineStatus.PENDING) | Q(status=LineStatus.RUNNING, claimed_at__lt=stale))
        .values_list("batch_id", flat=True)
        .distinct()
    )
    ids = list(waiting)
    for batch_id in ids:
        _enqueue(batch_id)
    # Cancelled batches whose last running lines finished elsewhere still need closing.
    for batch_id in (
        Batch.objects.filter(status=BatchStatus.CANCELLING)
        .exclude(lines__status=LineStatus.RUNNING)
        .values_list("id", flat=True)
    ):
        batch_finalize(batch_id=batch_id)
    return len(ids)


# --- the provider's own Batch API ----------------------------------------------------


def _provider_client(provider: Provider) -> openai.OpenAI:
    """The SDK for the provider's Files and Batch APIs, over a client that obeys the egress policy."""
    return openai.OpenAI(
        base_url=provider.base_url,
        api_key=provider.secret or "none",
        max_retries=2,
        timeout=120,
        http_client=egress_http_client(timeout=120),
    )


def batch_submit(*, batch_id: str) -> None:
    """Send the pending lines to the provider's Batch API as one batch (once: the row is locked meanwhile)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update(of=("self",)).select_related("provider", "project").get(pk=batch_id)
        if batch.provider_batch_id or batch.provider is None or batch.status != BatchStatus.IN_PROGRESS:
            return
        resolve = _Resolver(batch.project)
        pending = list(BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).order_by("line"))

        def batch_prices(line: BatchLine) -> tuple[Decimal, Decimal, str]:
            target = resolve(str(line.body.get("model")))
            assert target.price is not None  # a provider batch is chosen only when every model has batch prices
            return target.price.batch_input_per_mtok, target.price.batch_output_per_mtok, target.model

        if not _reserve_whole(batch, pending, batch_prices):
            # The whole batch does not fit a hard budget: run it line by line, each line within the budget.
            batch.backend = BatchBackend.SYNC
            batch.save(update_fields=["backend"])
            transaction.on_commit(lambda: _enqueue(batch.pk))
            return
        rows = [
            json.dumps({
                "custom_id": str(line.line), "method": "POST", "url": batch.endpoint,
                "body": {**line.body, "model": resolve(str(line.body.get("model"))).model},
            })
            for line in pending
        ]  # fmt: skip
        client = _provider_client(batch.provider)
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
                _settle_state(batch.reservation, Decimal(0))
            raise
        batch.provider_batch_id = remote.id
        batch.save(update_fields=["provider_batch_id"])
        BatchLine.objects.filter(pk__in=[line.pk for line in pending]).update(status=LineStatus.SUBMITTED)


def _fall_back_to_sync(batch: Batch) -> None:
    """Lines the provider did not finish go back to our sync path."""
    BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).update(status=LineStatus.PENDING)
    Batch.objects.filter(pk=batch.pk).update(backend=BatchBackend.SYNC)
    transaction.on_commit(lambda: _enqueue(batch.pk))


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
    client = _provider_client(batch.provider)
    remote = client.batches.retrieve(batch.provider_batch_id)
    if remote.status in ("completed", "expired", "cancelled", "failed"):
        _take_results(batch, client, remote)
        with transaction.atomic():
            if batch.status == BatchStatus.CANCELLING:
                BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).update(status=LineStatus.CANCELLED)
            elif BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).exists():
                _fall_back_to_sync(batch)
    elif batch.status == BatchStatus.CANCELLING:
        remote = client.batches.cancel(batch.provider_batch_id)
        BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).update(status=LineStatus.CANCELLED)
    elif now >= batch.expires_at - dt.timedelta(seconds=settings.BATCH_DEADLINE_MARGIN_SECONDS):
        logger.warning("batch %s: provider batch %s not done near the deadline", batch.pk, batch.provider_batch_id)
        client.batches.cancel(batch.provider_batch_id)
        with transaction.atomic():
            _fall_back_to_sync(batch)
    if not BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED).exists():
        _settle_whole(batch.pk)  # nothing left at the provider: its share of the budget is what it cost
    if not BatchLine.objects.filter(
        batch=batch, status__in=(LineStatus.PENDING, LineStatus.RUNNING, LineStatus.SUBMITTED)
    ).exists():
        batch_finalize(batch_id=batch.pk)
    return str(remote.status)


def _take_results(batch: Batch, client: openai.OpenAI, remote: Any) -> None:
    resolve = _Resolver(batch.project)
    by_line = {line.line: line for line in BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED)}
    results = []
    for file_id in (remote.output_file_id, remote.error_file_id):
        if not file_id:
            continue
        for raw in client.files.content(file_id).text.splitlines():
            if not raw.strip():
                continue
            record = json.loads(raw)
            line = by_line.get(int(record.get("custom_id") or 0))
            if line is None:
                continue
            result = _from_record(line, resolve(str(line.body.get("model"))), record)
            result.price(batch_prices=True)
            results.append(result)
    _commit(batch, Q(status=LineStatus.SUBMITTED), results, BatchBackend.PROVIDER)


def _from_record(line: BatchLine, target: _Target, record: dict[str, Any]) -> _Result:
    """A line's result from one record of a Batch API output or error file."""
    response = record.get("response") or {}
    body = response.get("body")
    if not isinstance(body, dict):
        body = {"error": record.get("error")}
    return _Result(line.pk, line.line, line.custom_id, target, int(response.get("status_code") or 500), body, 0)


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
    return len(ids)


# --- a stopped self-hosted deployment: vLLM's offline batch runner ---------------------------


def _stopped_deployment(project: Project, lines: list[BatchLine]) -> Deployment | None:
    """The organisation's stopped vLLM deployment serving the one model every line names, if no running
    provider serves it: then the lines run offline with ``vllm run-batch`` on its GPU host."""
    models = {str(line.body.get("model")) for line in lines}
    if len(models) != 1 or _Resolver(project)(next(iter(models))).provider is not None:
        return None
    return Deployment.objects.filter(
        organization_id=project.organization_id, served_model_name=next(iter(models)), status=DeploymentStatus.STOPPED
    ).first()


def batch_run_vllm(*, batch_id: str) -> int:
    """Run the batch's lines through ``vllm run-batch`` on this (GPU) host; returns the lines answered.

    Lines are marked submitted first; a run that dies leaves them submitted, and the next attempt (a
    redelivered task) runs them again: their ledger rows are keyed by line, so nothing is billed twice.
    Each line is billed at the deployment's price per output token (hourly cost / throughput), and the
    GPU time is recorded as a run of the deployment.
    """
    batch = Batch.objects.select_related("project", "api_key", "deployment").filter(pk=batch_id).first()
    if batch is None or batch.deployment is None or batch.status != BatchStatus.IN_PROGRESS:
        return 0
    deployment = batch.deployment
    with transaction.atomic():
        BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).update(
            status=LineStatus.SUBMITTED, claimed_by="vllm-run-batch", claimed_at=timezone.now()
        )
        lines = {line.line: line for line in BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED)}
    if not lines:
        return 0
    price = price_per_mtok(
        hourly_cost_usd=deployment.hourly_cost_usd, throughput_tokens_per_s=deployment.throughput_tokens_per_s
    )
    target = _Target(deployment.provider, deployment.served_model_name, None)
    if not batch.reservation and not _reserve_whole(
        batch, list(lines.values()), lambda line: (Decimal(0), price, deployment.served_model_name)
    ):
        refused = {"message": "A hard budget has no room for this batch on the self-hosted deployment.",
                   "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}  # fmt: skip
        refusals = [
            _Result(line.pk, line.line, line.custom_id, target, 429, {"error": refused}, 0) for line in lines.values()
        ]
        _commit(batch, Q(status=LineStatus.SUBMITTED), refusals, BatchBackend.VLLM)
        batch_finalize(batch_id=batch.pk)
        return 0
    with tempfile.TemporaryDirectory(prefix=f"{batch.id}-") as folder:
        source, output = Path(folder) / "input.jsonl", Path(folder) / "output.jsonl"
        source.write_text("".join(
            json.dumps({"custom_id": str(n), "method": "POST", "url": batch.endpoint,
                        "body": {**line.body, "model": deployment.served_model_name}}) + "\n"
            for n, line in sorted(lines.items())
        ))  # fmt: skip
        command = vllm.run_batch_command(
            deployment=deployment, executable=deployments_conf.vllm_executable(), source=source, target=output
        )
        started = timezone.now()
        try:
            finished = subprocess.run(  # noqa: S603 (our own argument vector, no shell)
                command,
                capture_output=True,
                text=True,
                timeout=settings.BATCH_VLLM_TIMEOUT_SECONDS,
                check=False,
                env=vllm.server_environment(os.environ),
            )
            problem = "" if finished.returncode == 0 else (finished.stderr or finished.stdout)[-2000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = str(exc)
        ended = timezone.now()
        records = [json.loads(raw) for raw in output.read_text().splitlines() if raw.strip()] if output.exists() else []
    hours = Decimal((ended - started).total_seconds()) / 3600
    DeploymentRun.objects.create(
        deployment=deployment, started_at=started, ended_at=ended, gpu_count=deployment.gpu_count,
        hourly_cost_usd=deployment.hourly_cost_usd, gpu_hours=(hours * deployment.gpu_count).quantize(MICRO),
        cost=(hours * deployment.hourly_cost_usd).quantize(MICRO), outcome=DeploymentStatus.STOPPED,
    )  # fmt: skip
    results = []
    for record in records:
        line = lines.pop(int(record.get("custom_id") or 0), None)
        if line is None:
            continue
        result = _from_record(line, target, record)
        usage = result.body.get("usage") if result.status == 200 else None
        if isinstance(usage, dict):
            result.prompt_tokens = clean_count(usage.get("prompt_tokens"))
            result.completion_tokens = clean_count(usage.get("completion_tokens"))
            result.cost = result.counterfactual = (
                token_cost(
                    prompt_tokens=result.prompt_tokens,
                    cached_tokens=0,
                    completion_tokens=result.completion_tokens,
                    input_rate=Decimal(0),
                    cached_input_rate=Decimal(0),
                    output_rate=price,
                )
                / MTOK
            )
        results.append(result)
    failure = {"message": f"vllm run-batch gave no answer for this line. {problem}".strip(), "type": "api_error",
               "param": None, "code": "vllm_run_batch_failed"}  # fmt: skip
    results += [
        _Result(line.pk, line.line, line.custom_id, target, 502, {"error": failure}, 0) for line in lines.values()
    ]
    _commit(batch, Q(status=LineStatus.SUBMITTED), results, BatchBackend.VLLM)
    _settle_whole(batch.pk)
    batch_finalize(batch_id=batch.pk)
    return sum(r.status == 200 for r in results)
