"""A request's metrics are tallied in the process, then handed to prometheus_client: the same figures as
recording each request straight into it, only up to a second later."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from apps.core.snapshot import KeyPolicy
from apps.gateway.call import Call
from apps.gateway.metrics import LATENCY_BUCKETS, UPSTREAM_BUCKETS, GatewayMetrics, flush_all

KEY = KeyPolicy(
    id=1, lookup_id="abcdefgh", key_hash=b"", project_id=9_101, organization_id=1, allowed_models=frozenset(),
    default_feature="", expires_at=None, revoked=False,
)  # fmt: skip


def _call(*, added: float, upstream: float, ttft_ms: int | None, cost: str, served: bool = True) -> Call:
    call = Call(request_id="r", endpoint="chat.completions", started=time.perf_counter() - added - upstream,
                created_at=0.0, key=KEY, prompt_tokens=11, completion_tokens=7)  # fmt: skip
    call.status_code, call.upstream_s, call.cost = 200, upstream, Decimal(cost)
    call.served_model, call.provider_id = "tally-model", 1 if served else None
    call.streamed, call.ttft_ms = ttft_ms is not None, ttft_ms
    return call


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _buckets(name: str, bounds: tuple[float, ...], **labels: str) -> list[float]:
    return [_sample(f"{name}_bucket", **labels, le=str(b)) for b in bounds] + [
        _sample(f"{name}_bucket", **labels, le="+Inf")
    ]


def test_tallied_requests_reach_prometheus_as_if_each_were_observed() -> None:
    slug, metrics = "tally-a", GatewayMetrics()
    labels = dict(endpoint="chat.completions", status="200", project=slug, model="tally-model")
    # Latencies on, between and past the bucket bounds (a value equal to a bound is counted in that bucket).
    calls = [
        _call(added=0.0005, upstream=0.05, ttft_ms=None, cost="0.001"),
        _call(added=0.003, upstream=0.3, ttft_ms=120, cost="0.002"),
        _call(added=9.0, upstream=400.0, ttft_ms=400_000, cost="0"),
    ]
    requests_before = _sample("costcontrol_gateway_requests_total", **labels)
    upstream_before = _buckets("costcontrol_upstream_latency_seconds", UPSTREAM_BUCKETS, model="tally-model")
    ttft_before = _buckets("costcontrol_time_to_first_token_seconds", UPSTREAM_BUCKETS, model="tally-model")
    for call in calls:
        metrics.request(call, slug, cache_result=None)
    assert _sample("costcontrol_gateway_requests_total", **labels) == requests_before  # tallied, not yet handed

    flush_all()
    assert _sample("costcontrol_gateway_requests_total", **labels) == requests_before + 3
    upstream = _buckets("costcontrol_upstream_latency_seconds", UPSTREAM_BUCKETS, model="tally-model")
    # Cumulative buckets: 0.05 is in le=0.05; 0.3 in le=0.5; 400 only in +Inf.
    expected = [(b >= 0.05) + (b >= 0.3) for b in UPSTREAM_BUCKETS] + [3]
    assert [a - b for a, b in zip(upstream, upstream_before, strict=True)] == expected
    ttft = _buckets("costcontrol_time_to_first_token_seconds", UPSTREAM_BUCKETS, model="tally-model")
    assert [a - b for a, b in zip(ttft, ttft_before, strict=True)] == [
        (b >= 0.12) + (b >= 400) for b in UPSTREAM_BUCKETS
    ] + [2]
    assert _sample("costcontrol_upstream_latency_seconds_sum", model="tally-model") >= 400.35
    added = _buckets("costcontrol_gateway_added_latency_seconds", LATENCY_BUCKETS, endpoint="chat.completions")
    assert added[-1] >= 3
    assert _sample("costcontrol_spend_usd_total", project=slug, model="tally-model") == pytest.approx(0.003)
    assert _sample("costcontrol_tokens_total", project=slug, model="tally-model", direction="prompt") == 33
    assert _sample("costcontrol_tokens_total", project=slug, model="tally-model", direction="completion") == 21

    # Handed over once: a second flush adds nothing.
    flush_all()
    assert _sample("costcontrol_gateway_requests_total", **labels) == requests_before + 3
    assert _sample("costcontrol_tokens_total", project=slug, model="tally-model", direction="prompt") == 33


def test_stopping_hands_over_what_is_tallied() -> None:
    labels = dict(endpoint="chat.completions", status="200", project="tally-b", model="")
    before = _sample("costcontrol_gateway_requests_total", **labels)

    async def serve_one() -> None:
        metrics = GatewayMetrics()
        metrics.start()
        call = _call(added=0.001, upstream=0.0, ttft_ms=None, cost="0", served=False)
        metrics.request(call, "tally-b", cache_result=None)
        await metrics.stop()

    asyncio.run(serve_one())
    assert _sample("costcontrol_gateway_requests_total", **labels) == before + 1
    # A request no provider served has no model children: its tokens are not counted under any model.
    assert _sample("costcontrol_tokens_total", project="tally-b", model="", direction="prompt") == 0
