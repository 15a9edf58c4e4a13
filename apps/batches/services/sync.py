"""The sync path: claim lines, send them to the provider within the hard budgets, record them.

A worker claims a chunk of pending lines (a lease, so a dead worker's lines are taken over),
sends them with a concurrency cap (``BATCH_SYNC_CONCURRENCY``) so live traffic keeps its share
of the provider's rate limits, and marks them done in the same transaction that writes their
ledger rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from contextlib import nullcontext
from typing import Any

import aiohttp
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from psycopg import sql

from apps.batches.models import Batch, BatchBackend, BatchLine, BatchStatus, LineStatus
from apps.batches.services.lines import (
    LineResult,
    Resolver,
    Target,
    batch_finalize,
    commit,
    enqueue,
)
from apps.batches.services.provider import batch_poll, batch_submit
from apps.batches.services.reserve import (
    BatchBudgets,
    batch_budgets,
    batch_limiter,
    line_worst_case,
    reserve_on,
)
from apps.core.anthropic import ANTHROPIC_KINDS
from apps.core.egress_http import EgressConnector
from apps.core.errors import GatewayError, bad_request
from apps.core.request import ENDPOINT_PATHS, ENDPOINT_RESPONSES, validate
from apps.core.responses_chat import completion_to_response, responses_to_chat
from costcontrol.egress import egress_policy

logger = logging.getLogger(__name__)


CLAIM_SQL = sql.SQL(
    """
    UPDATE {lines} SET status = %s, claimed_by = %s, claimed_at = now(), attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM {lines}
        WHERE batch_id = %s AND (status = %s OR (status = %s AND claimed_at < now() - %s * interval '1 second'))
        ORDER BY line LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING id, line, custom_id, body
    """
).format(lines=sql.Identifier(BatchLine._meta.db_table))


def claim(batch_id: str, worker: str, count: int) -> list[tuple[int, int, str, dict[str, Any]]]:
    """Take up to ``count`` lines: pending ones, or running ones whose worker's lease ran out."""
    params: list[str | int] = [
        LineStatus.RUNNING, worker, batch_id, LineStatus.PENDING, LineStatus.RUNNING,
        settings.BATCH_LEASE_SECONDS, count,
    ]  # fmt: skip
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM_SQL, params)
        rows = cursor.fetchall()
    return [(row[0], row[1], row[2], row[3] if isinstance(row[3], dict) else json.loads(row[3])) for row in rows]


async def send_line(
    http: aiohttp.ClientSession, endpoint: str, target: Target, claimed: tuple[int, int, str, dict[str, Any]]
) -> LineResult:
    line_id, number, custom_id, body = claimed
    started = time.perf_counter()
    if target.provider is None:
        error = {"message": f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}  # fmt: skip
        return LineResult(line_id, number, custom_id, target, 404, {"error": error}, 0)
    provider = target.provider
    headers = {"Authorization": f"Bearer {provider.secret}"} if provider.secret else {}
    path, line_request = endpoint[3:], {**body, "model": target.model}
    request = line_request
    translated = ENDPOINT_PATHS[endpoint] == ENDPOINT_RESPONSES and not provider.responses_api
    if translated:  # a Chat-only provider: the line goes as a chat request, as the gateway sends a live one
        try:
            path, request = "/chat/completions", _responses_line_as_chat(provider.kind, line_request)
        except GatewayError as exc:
            return LineResult(line_id, number, custom_id, target, exc.status, json.loads(exc.body()), 0)
    try:
        url = f"{provider.base_url.rstrip('/')}{path}"
        async with http.post(url, json=request, headers=headers, allow_redirects=False) as response:
            if 300 <= response.status < 400:
                raise aiohttp.ClientError(f"it answered {response.status} (a redirect), and redirects are not followed")
            status, data = response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        status, data = 502, {"error": {"message": f"Could not reach the provider: {exc}.", "type": "api_error",
                                       "param": None, "code": "upstream_unavailable"}}  # fmt: skip
    latency = int((time.perf_counter() - started) * 1000)
    if translated and status == 200 and isinstance(data, dict):
        data = completion_to_response(data, response_id=f"resp_batchline{line_id:012d}", payload=line_request)
    result = LineResult(line_id, number, custom_id, target, status, data if isinstance(data, dict) else {}, latency)
    result.price(batch_prices=False)
    return result


def _responses_line_as_chat(kind: str, request: dict[str, Any]) -> dict[str, Any]:
    """A /v1/responses line as the chat request a Chat-only provider takes (400 where it cannot be one)."""
    if kind in ANTHROPIC_KINDS:
        raise bad_request("An Anthropic provider does not serve /v1/responses; send /v1/messages lines.",
                          param="model", code="unsupported_endpoint")  # fmt: skip
    if request.get("previous_response_id") is not None:
        raise bad_request("previous_response_id is not available in a batch sent to a Chat-only provider.",
                          param="previous_response_id", code="unsupported_parameter")  # fmt: skip
    return responses_to_chat({**request, "stream": False})


async def send_all(
    batch_id: str,
    endpoint: str,
    targets: list[Target],
    claimed: list[tuple[int, int, str, dict[str, Any]]],
    budgets: BatchBudgets,
) -> list[LineResult]:
    """Send a chunk of lines, at most ``BATCH_SYNC_CONCURRENCY`` at a time, each within the hard budgets."""
    gate = asyncio.Semaphore(max(settings.BATCH_SYNC_CONCURRENCY, 1))
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS)

    async def one(
        http: aiohttp.ClientSession, target: Target, line: tuple[int, int, str, dict[str, Any]]
    ) -> LineResult:
        async with gate:
            try:
                # Lines are checked when the batch is made; a line stored before that check existed is
                # answered as a live request would be, never sent (nor left to stop its chunk).
                validate(ENDPOINT_PATHS[endpoint], line[3])
            except GatewayError as exc:
                return LineResult(line[0], line[1], line[2], target, exc.status, json.loads(exc.body()), 0)
            applying = budgets.applying(line[3]) if limit is not None and target.price is not None else []
            if not applying or target.price is None or limit is None:
                return await send_line(http, endpoint, target, line)
            usd, tokens_ = line_worst_case(
                ENDPOINT_PATHS[endpoint],
                line[3],
                model=target.model,
                input_per_mtok=target.price.input_per_mtok,
                output_per_mtok=target.price.output_per_mtok,
            )
            reserved = await reserve_on(
                limit, request_id=f"{batch_id}-{line[1]}", budgets=applying, usd=usd, tokens_=tokens_
            )
            if isinstance(reserved, dict):  # a hard budget has no room left: refused like a live request
                return LineResult(line[0], line[1], line[2], target, 429, reserved, 0)
            result = await send_line(http, endpoint, target, line)
            await limit.settle(
                reserved, actual_usd=result.cost, actual_tokens=result.prompt_tokens + result.completion_tokens
            )
            return result

    async with (
        batch_limiter() if budgets.any else nullcontext() as limit,
        aiohttp.ClientSession(timeout=timeout, connector=EgressConnector(egress_policy())) as http,
    ):
        return list(await asyncio.gather(*(one(http, t, c) for t, c in zip(targets, claimed, strict=True))))


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
    resolve = Resolver(batch.project)
    budgets = batch_budgets(batch)
    handled = 0
    while True:
        closing = Q(status=BatchStatus.CANCELLING) | Q(expires_at__lte=timezone.now())
        if Batch.objects.filter(closing, pk=batch_id).exists():
            break  # cancelled, or past its window: batches_expire closes it
        claimed = claim(batch_id, worker, chunk)
        if not claimed:
            break
        targets = [resolve(str(c[3].get("model"))) for c in claimed]  # SQL stays outside the event loop
        results = asyncio.run(send_all(batch_id, batch.endpoint, targets, claimed, budgets))
        commit(batch, Q(status=LineStatus.RUNNING, claimed_by=worker), results, BatchBackend.SYNC)
        handled += len(results)
    if not BatchLine.objects.filter(batch_id=batch_id, status__in=(LineStatus.PENDING, LineStatus.RUNNING)).exists():
        batch_finalize(batch_id=batch_id)
    return handled


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
        enqueue(batch_id)
    # Cancelled batches whose last running lines finished elsewhere still need closing.
    for batch_id in (
        Batch.objects.filter(status=BatchStatus.CANCELLING)
        .exclude(lines__status=LineStatus.RUNNING)
        .values_list("id", flat=True)
    ):
        batch_finalize(batch_id=batch_id)
    return len(ids)
