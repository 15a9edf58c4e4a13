"""Shadow: a sampled copy of a request sent to a second model after the app has its answer.

The app's request only pays for ``offer``: a ``put_nowait`` on a bounded queue
(a full queue drops the sample and counts it; it never waits). Worker tasks
call the shadow model, compare its answer with the one the app got (exact,
normalized, embedding similarity) and write the comparison to the ledger
stream as a ``shadow`` event; the ledger consumer stores it apart from ledger
rows, so a shadow call is never billed to the app, never counts against its
budgets and never reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

import aiohttp
import orjson

from apps.core.anthropic import ANTHROPIC_KINDS, message_to_completion
from apps.core.events import clean_count, shadow_event_clean
from apps.core.pricing import PriceRow
from apps.core.responses import output_text, usage_counts
from apps.core.routing import CascadeView, answer_confidence, normalize_text
from apps.core.snapshot import ProviderTarget
from apps.core.text import answer_text

logger = logging.getLogger(__name__)


Job = TypeVar("Job")

# Answers longer than this are compared and stored by their first part only.
MAX_TEXT = 4000


@dataclass(slots=True)
class ShadowJob:
    request_id: str
    rule_id: int
    organization_id: int
    project_id: int
    url: str
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout
    payload: dict[str, Any]
    provider: ProviderTarget
    price: PriceRow | None
    primary_model: str
    primary_text: str
    primary_latency_ms: int
    primary_cost: Decimal
    # The shape the shadow provider answers in: "chat" (Chat Completions, or Messages made into it) or
    # "responses" (a /v1/responses request to a provider that speaks Responses).
    answer_shape: str = "chat"
    # A cascade trial's rule: the answer's confidence as that cascade would compute it (None: not measured).
    confidence: CascadeView | None = None


class OffPathQueue(Generic[Job]):
    """A bounded queue of work done after the app has its answer, by a few worker tasks; each job's
    result (None: nothing to record) goes to ``write``. ``offer`` never waits: a full queue drops."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        write: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        size: int,
        workers: int,
    ) -> None:
        self._http = http
        self._write = write
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max(size, 1))
        self._workers = max(workers, 1)
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def offer(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 100 == 1:
                logger.warning("%s full; %d jobs dropped so far", type(self).__name__, self.dropped)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                result = await self._handle(job)
                if result is not None:
                    await self._write(result)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: request %s failed", type(self).__name__, getattr(job, "request_id", "?"))

    async def _handle(self, job: Job) -> dict[str, Any] | None:
        raise NotImplementedError


class ShadowQueue(OffPathQueue[ShadowJob]):
    async def _handle(self, job: ShadowJob) -> dict[str, Any] | None:
        return await self._compare(job)

    async def _compare(self, job: ShadowJob) -> dict[str, Any]:
        started = time.perf_counter()
        status, text, cost = 0, "", Decimal(0)
        score: float | None = None
        try:
            async with self._http.post(
                job.url, data=orjson.dumps(job.payload), headers=job.headers, timeout=job.timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                body = await resp.read()
            data = orjson.loads(body) if status == 200 else None
            if isinstance(data, dict) and job.provider.kind in ANTHROPIC_KINDS:
                data = message_to_completion(data)
            if isinstance(data, dict) and job.answer_shape == "responses":
                text = output_text(data)
                counts = usage_counts(data.get("usage"))
                if job.price is not None and counts is not None:
                    cost = job.price.cost(
                        prompt_tokens=counts.prompt_tokens, cached_tokens=counts.cached_tokens,
                        completion_tokens=counts.completion_tokens, reasoning_tokens=counts.reasoning_tokens,
                    )  # fmt: skip
            elif isinstance(data, dict):
                text = answer_text(data)
                if job.confidence is not None:
                    score = answer_confidence(data, tokens=job.confidence.tokens, aggregate=job.confidence.aggregate)
                usage = data.get("usage")
                usage = usage if isinstance(usage, dict) else {}
                details = usage.get("prompt_tokens_details")
                details = details if isinstance(details, dict) else {}
                if job.price is not None:
                    cost = job.price.cost(
                        prompt_tokens=clean_count(usage.get("prompt_tokens")),
                        cached_tokens=clean_count(details.get("cached_tokens")),
                        completion_tokens=clean_count(usage.get("completion_tokens")),
                        cache_write_tokens=clean_count(details.get("cache_write_tokens")),
                    )
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, AttributeError):
            status = status or 504
        latency_ms = int((time.perf_counter() - started) * 1000)
        primary, shadow = job.primary_text[:MAX_TEXT], text[:MAX_TEXT]
        answered = status == 200
        similarity = await answer_similarity(primary, shadow) if answered and primary and shadow else None
        return shadow_event_clean(
            {
                "kind": "shadow",
                "request_id": job.request_id,
                "created_at": time.time(),
                "rule_id": job.rule_id,
                "organization_id": job.organization_id,
                "project_id": job.project_id,
                "primary_model": job.primary_model,
                "shadow_model": job.payload["model"],
                "primary_latency_ms": job.primary_latency_ms,
                "shadow_latency_ms": latency_ms,
                "primary_cost": str(job.primary_cost),
                "shadow_cost": str(cost),
                "shadow_status": status,
                "exact_match": answered and primary.strip() == shadow.strip(),
                "normalized_match": answered and normalize_text(primary) == normalize_text(shadow),
                "similarity": similarity,
                "confidence": score,
                "primary_text": primary,
                "shadow_text": shadow,
            }
        )


async def answer_similarity(a: str, b: str) -> float | None:
    from apps.cache.embedding import local_embedder

    loop = asyncio.get_running_loop()
    try:
        vectors = await loop.run_in_executor(None, local_embedder().embed, [a, b])
    except Exception:
        logger.exception("could not embed answers to compare")
        return None
    return round(float(vectors[0] @ vectors[1]), 4)
