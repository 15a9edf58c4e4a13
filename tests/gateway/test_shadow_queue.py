"""The shadow queue never makes a request wait: past its bound, samples are dropped and counted."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from apps.core.routing import CascadeView
from apps.core.snapshot import ProviderTarget
from apps.gateway.shadow_queue import ShadowJob, ShadowQueue


def _job(n: int) -> ShadowJob:
    provider = ProviderTarget(id=1, name="p", kind="simulated", base_url="http://127.0.0.1:9/v1", secret="")
    return ShadowJob(
        request_id=f"r{n}", rule_id=1, organization_id=1, project_id=1, url=provider.base_url, headers={},
        timeout=aiohttp.ClientTimeout(total=1), payload={"model": "m"}, provider=provider, price=None,
        primary_model="m", primary_text="a", primary_latency_ms=1, primary_cost=Decimal(0),
    )  # fmt: skip


def test_a_full_queue_drops_samples_instead_of_waiting() -> None:
    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        written: list[dict[str, Any]] = []
        both = asyncio.Event()

        async def write(event: dict[str, Any]) -> None:
            written.append(event)
            if len(written) == 2:
                both.set()

        async with aiohttp.ClientSession() as http:
            queue = ShadowQueue(http, write, size=2, workers=1)
            for n in range(5):  # workers not started yet: the queue fills
                queue.offer(_job(n))
            dropped = queue.dropped
            queue.start()
            await asyncio.wait_for(both.wait(), timeout=10)
            await queue.stop()
        return dropped, written

    dropped, written = asyncio.run(scenario())
    assert dropped == 3
    # Nothing listens on port 9: the comparison is still recorded, as a failed shadow call.
    assert [(e["request_id"], e["shadow_status"], e["exact_match"]) for e in written] == [
        ("r0", 504, False),
        ("r1", 504, False),
    ]


def test_a_trial_queue_takes_at_most_its_share_of_jobs_per_second() -> None:
    """A comparison costs ~10 ms of CPU: a trial samples at most ``per_second`` jobs, skipping the rest unqueued."""
    from apps.gateway.response_cache import CacheRequest, ResponseCache  # noqa: PLC0415
    from apps.gateway.trial_queue import TrialJob, TrialQueue  # noqa: PLC0415

    async def scenario() -> tuple[int, int, int]:
        async def write(event: dict[str, Any]) -> None:
            return None

        async with aiohttp.ClientSession() as http:
            cache = ResponseCache(None, "", "t:")  # type: ignore[arg-type]  (offer never touches it)
            queue = TrialQueue(http, write, cache, size=1000, workers=1, per_second=3)
            request = CacheRequest.__new__(CacheRequest)
            job = TrialJob(request_id="r", created_at=0.0, trial_id=1, project_id=1, floor=0.8, request=request,
                           fresh_text="a")  # fmt: skip
            for _ in range(50):  # a burst: one second's allowance is taken, the rest skipped
                queue.offer(job)
            burst = queue._queue.qsize()  # noqa: SLF001
            await asyncio.sleep(0.7)  # about two more jobs' worth of allowance
            for _ in range(50):
                queue.offer(job)
            assert queue.dropped == 0
            return burst, queue._queue.qsize(), queue.skipped  # noqa: SLF001

    burst, later, skipped = asyncio.run(scenario())
    assert burst == 3  # workers not started: what was taken is still queued
    assert later - burst == 2  # 0.7 s at 3 a second refills two jobs
    assert skipped == 100 - later  # skipped before the queue: none of them counts as dropped


@pytest.mark.live
def test_a_cascade_trials_shadow_records_the_confidence_the_cascade_computes(upstream: str) -> None:
    """The cheap answer's confidence, by the cascade's own formula; malformed logprobs are none, as the
    cascade counts them; a shadow that measures no confidence records none."""
    cascade = CascadeView(threshold=0.9, tokens=1, aggregate="min", escalate_new_labels=False, labels=frozenset())

    def job(text: str, measure: CascadeView | None) -> ShadowJob:
        provider = ProviderTarget(id=1, name="p", kind="simulated", base_url=upstream, secret="sk")
        payload = {"model": "gpt-4.1-nano", "logprobs": True, "messages": [{"role": "user", "content": text}]}
        return dataclasses.replace(
            _job(0), url=f"{upstream}/chat/completions", headers={"Authorization": "Bearer sk"}, provider=provider,
            payload=payload, confidence=measure, request_id=text,
        )  # fmt: skip

    async def scenario() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            queue = ShadowQueue(http, _write_nothing, size=10, workers=1)
            jobs = [job("refund? [[sim:confidence=0.42]]", cascade), job("refund? [[sim:logprob=710]]", cascade),
                    job("refund? [[sim:confidence=0.42]] ", None)]  # fmt: skip
            return [await queue._compare(j) for j in jobs]  # noqa: SLF001

    measured, malformed, unmeasured = asyncio.run(scenario())
    assert measured["shadow_status"] == 200 and measured["confidence"] == pytest.approx(0.42)
    assert malformed["shadow_status"] == 200 and malformed["confidence"] is None
    assert unmeasured["confidence"] is None


async def _write_nothing(event: dict[str, Any]) -> None:
    return None
