"""Semantic-cache trials: after the app has its fresh answer, what the cache would have served instead.

A project with a semantic-cache trial in shadow (``CachePolicyView.trial_id``) gets every answered chat
request offered here (``put_nowait``: a full queue drops it, the app never waits). A worker embeds the
prompt, asks pgvector for the nearest stored prompt of another request (same project, namespace and
fingerprint), and, when it is at least the trial's floor similar, compares the stored answer with the
fresh one: normalised match, embedding similarity, and whether the cache guard would have let the hit
through. The comparison goes to its own stream (``names.trial_stream``), stored apart from ledger rows:
the trial never bills the app, never counts against its budgets and costs nothing upstream.

A comparison costs the gateway about 10 ms of CPU (three embeddings and a pgvector query), more than
ten forwarded requests; measured with ``make bench BENCH_ARGS=--trial``, a trial sampling every
request cut a 2-core box's throughput by 89%. A trial needs hundreds of comparisons, not every
request, so each process takes at most ``GATEWAY_TRIAL_JOBS_PER_SECOND`` (token bucket) and skips
the rest before they are queued.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from apps.cache.guard import agree
from apps.core.events import trial_event_clean
from apps.core.routing import normalize_text
from apps.core.text import answer_text
from apps.gateway.response_cache import CacheRequest, ResponseCache
from apps.gateway.shadow_queue import MAX_TEXT, OffPathQueue, answer_similarity


@dataclass(slots=True)
class TrialJob:
    request_id: str
    created_at: float
    trial_id: int
    project_id: int
    floor: float
    request: CacheRequest
    fresh_text: str


class TrialQueue(OffPathQueue[TrialJob]):
    def __init__(
        self,
        http: aiohttp.ClientSession,
        write: Any,
        cache: ResponseCache,
        *,
        size: int,
        workers: int,
        per_second: float,
    ) -> None:
        super().__init__(http, write, size=size, workers=workers)
        self._cache = cache
        self._per_second = per_second
        self._allowance = per_second  # a token bucket holding at most one second's jobs
        self._refilled = time.monotonic()
        self.skipped = 0

    def offer(self, job: TrialJob) -> None:
        now = time.monotonic()
        self._allowance = min(self._per_second, self._allowance + (now - self._refilled) * self._per_second)
        self._refilled = now
        if self._allowance < 1:
            self.skipped += 1  # past this second's share: the trial measures a sample
            return
        self._allowance -= 1
        super().offer(job)

    async def _handle(self, job: TrialJob) -> dict[str, Any] | None:
        nearest = await self._cache.nearest(job.request, other=True)
        if nearest is None or nearest.similarity < job.floor:
            return None  # no would-be hit: nothing to measure
        cached, fresh = answer_text(nearest.response)[:MAX_TEXT], job.fresh_text[:MAX_TEXT]
        matched = normalize_text(cached) == normalize_text(fresh)
        return trial_event_clean(
            {
                "kind": "trial",
                "trial_id": job.trial_id,
                "project_id": job.project_id,
                "request_id": job.request_id,
                "created_at": job.created_at,
                "prompt_similarity": round(nearest.similarity, 4),
                "guard_agrees": agree(job.request.text, nearest.prompt_text, job.request.policy.learned_opposites),
                "normalized_match": matched,
                "answer_similarity": await answer_similarity(cached, fresh) if cached and fresh else None,
                # Prompts are kept only where the answers disagree: what the guard can learn from.
                "prompt_text": "" if matched else job.request.text,
                "cached_prompt_text": "" if matched else nearest.prompt_text,
            }
        )
