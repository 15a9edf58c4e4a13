"""The gateway's Prometheus metrics, recorded once per request when it is recorded on the ledger.

``prometheus_client`` in multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is
set (every process of a host writes its values there and any process's
``/metrics`` sums them); in one process otherwise. That choice is made when
``prometheus_client`` is first imported, so the variable must be set before
the process starts (``runstack`` does it for its children).

Labels are bounded: the endpoint, the status code, the project's slug, a model
the project's providers serve (never the model an app asked for, which is any
string), the refusal reason, the cache hit kind. No end user, key or request id.
A request's label children are bound once per (endpoint, status, project, model)
and reused.

A request is tallied in plain Python numbers on its bound children, and the
tallies reach ``prometheus_client`` at most ``FLUSH_SECONDS`` later: every
second, before this process renders ``/metrics``, and when the gateway stops.
Seven ``prometheus_client`` updates a request (each behind a lock, and in
multiprocess mode a write to a memory-mapped file) cost about 5% of a
request's instructions; the tally costs a fifth of that. So a scrape can miss
the last second of another worker's requests, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from bisect import bisect_left
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from apps.gateway.call import Call

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

REQUESTS = Counter(
    "costcontrol_gateway_requests",
    "Requests answered by the gateway, by endpoint, HTTP status, project and served model.",
    ["endpoint", "status", "project", "model"],
)
ADDED_LATENCY = Histogram(
    "costcontrol_gateway_added_latency_seconds",
    "Time a request spent in the gateway itself: its whole time less the time waiting on providers.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_LATENCY = Histogram(
    "costcontrol_upstream_latency_seconds",
    "Time spent waiting on providers for one request (every attempt; a stream until its last byte).",
    ["model"],
    buckets=UPSTREAM_BUCKETS,
)
TTFT = Histogram(
    "costcontrol_time_to_first_token_seconds",
    "Time from a streamed request's arrival to its first byte from the provider.",
    ["model"],
    buckets=UPSTREAM_BUCKETS,
)
CACHE = Counter(
    "costcontrol_cache_lookups",
    "Response cache lookups by project and result: exact or semantic hit, or miss.",
    ["project", "result"],
)
REFUSALS = Counter(
    "costcontrol_refusals",
    "Requests refused before reaching a provider, by project and reason "
    "(budget, rate_limit, key, model_not_allowed, limits_unavailable).",
    ["project", "reason"],
)
SPEND = Counter(
    "costcontrol_spend_usd",
    "Dollars charged to requests (their answers plus side calls: a cascade's cheap call, possibly billed "
    "attempts), by project and served model.",
    ["project", "model"],
)
TOKENS = Counter(
    "costcontrol_tokens", "Tokens by project, served model and direction.", ["project", "model", "direction"]
)
RETRIES = Counter("costcontrol_upstream_retries", "Upstream attempts repeated on the same deployment.", ["model"])
FALLBACKS = Counter("costcontrol_upstream_fallbacks", "Requests moved on to their next target.", ["model"])
CIRCUIT_OPEN = Gauge(
    "costcontrol_circuit_open",
    "1 while a deployment's circuit breaker is open (requests skip it), else 0.",
    ["deployment"],
    multiprocess_mode="livemax",
)
CIRCUIT_OPENED = Counter("costcontrol_circuit_opened", "Times a deployment's circuit breaker opened.", ["deployment"])
SNAPSHOT_BUILT = Gauge(
    "costcontrol_policy_snapshot_built_timestamp_seconds",
    "When the policy snapshot a gateway process serves was built or last found current (the oldest of the "
    "live processes); its age is time() minus this.",
    multiprocess_mode="livemin",
)
SNAPSHOT_FAILURES = Counter("costcontrol_policy_snapshot_build_failures", "Policy snapshot builds that failed.")
LEDGER_SPOOLED = Counter(
    "costcontrol_ledger_spooled_events",
    "Ledger events written to the local spool because Redis refused them (re-sent later).",
)
REPLICAS_SHORT = Counter(
    "costcontrol_redis_wait_short",
    "Durable Redis writes (admission, settle, ledger event) that fewer replicas than REDIS_WAIT_REPLICAS "
    "acknowledged within REDIS_WAIT_TIMEOUT_MS: answered anyway, held by the primary alone until they catch up.",
)

# Error codes that mean the gateway refused the request itself, and the reason label each gets.
REFUSAL_REASONS = {
    "insufficient_quota": "budget",
    "rate_limit_exceeded": "rate_limit",
    "invalid_api_key": "key",
    "model_not_allowed": "model_not_allowed",
    "limits_unavailable": "limits_unavailable",
}
# Past this many bound label sets, start over (a bound, in case the label values are more varied than planned).
MAX_BOUND = 10_000
# The longest a request's figures wait in this process's tallies before they reach prometheus_client.
FLUSH_SECONDS = 1.0


class _Tally:
    """A histogram child, and the observations not yet handed to it: a count per bucket, and their sum."""

    __slots__ = ("child", "bounds", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds = tuple(child._upper_bounds)  # type: ignore[attr-defined]  # +Inf last
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is at least ``value``: where Histogram.observe counts it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        # prometheus_client (pinned) has no bulk observe: its buckets and sum are added to as observe would.
        if not any(self.counts):
            return
        for index, count in enumerate(self.counts):
            if count:
                self.child._buckets[index].inc(count)  # type: ignore[attr-defined]
                self.counts[index] = 0
        self.child._sum.inc(self.total)  # type: ignore[attr-defined]
        self.total = 0.0


@dataclass(slots=True)
class _Bound:
    """The label children one (endpoint, status, project, model) records into, and what this process
    tallied for them since the last flush (the histograms' in their tallies)."""

    requests: Counter
    added: _Tally
    upstream: _Tally | None
    ttft: _Tally | None
    spend: Counter | None
    prompt_tokens: Counter | None
    completion_tokens: Counter | None
    count: int = 0
    spent: float = 0.0
    prompt: int = 0
    completion: int = 0

    def flush(self) -> None:
        if self.count:
            self.requests.inc(self.count)
            self.count = 0
        self.added.flush()
        if self.upstream is not None:
            self.upstream.flush()
        if self.ttft is not None:
            self.ttft.flush()
        # Children a request without a served model lacks: its tallies are dropped, as they were never recorded.
        if self.spent and self.spend is not None:
            self.spend.inc(self.spent)
        if self.prompt and self.prompt_tokens is not None:
            self.prompt_tokens.inc(self.prompt)
        if self.completion and self.completion_tokens is not None:
            self.completion_tokens.inc(self.completion)
        self.spent, self.prompt, self.completion = 0.0, 0, 0


# Every process's live GatewayMetrics, for ``flush_all`` (the /metrics page calls it before it renders).
_LIVE: weakref.WeakSet[GatewayMetrics] = weakref.WeakSet()


def flush_all() -> None:
    """Hand every tally of this process to prometheus_client (on the event loop that records into them)."""
    for live in list(_LIVE):
        live.flush()


class GatewayMetrics:
    """One per process (on the ``Runtime``): tallies finished requests on pre-bound label children."""

    def __init__(self) -> None:
        self._bound: dict[tuple[str, int, int, str, str], _Bound] = {}
        self._flusher: asyncio.Task[None] | None = None
        _LIVE.add(self)

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every_second())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        for bound in self._bound.values():
            bound.flush()

    def request(self, call: Call, slug: str, *, cache_result: str | None) -> None:
        """Record one finished request of the project ``slug`` (called once, by ``stages.record``)."""
        # A model label only for a model a provider of the project served (cache hits have none).
        model = call.served_model if call.provider_id is not None else ""
        key = (call.endpoint, call.status_code, call.key.project_id, slug, model)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._bind(call.endpoint, call.status_code, slug, model)
        bound.count += 1
        bound.added.observe(max(call.elapsed_s() - call.upstream_s, 0.0))
        if bound.upstream is not None and call.upstream_s:
            bound.upstream.observe(call.upstream_s)
        if bound.ttft is not None and call.streamed and call.ttft_ms is not None:
            bound.ttft.observe(call.ttft_ms / 1000)
        spent = call.cost + call.side_cost
        if spent:
            bound.spent += float(spent)
        bound.prompt += call.prompt_tokens
        bound.completion += call.completion_tokens
        if cache_result is not None:
            CACHE.labels(slug, cache_result).inc()
        if call.error_code in REFUSAL_REASONS:
            REFUSALS.labels(slug, REFUSAL_REASONS[call.error_code]).inc()

    def unrecorded(self, endpoint: str, status: int, code: str | None) -> None:
        """A request that never became a ledger row: refused before its key was known, or ``/v1/models``."""
        REQUESTS.labels(endpoint, str(status), "", "").inc()
        if code in REFUSAL_REASONS:
            REFUSALS.labels("", REFUSAL_REASONS[code]).inc()

    def _bind(self, endpoint: str, status: int, slug: str, model: str) -> _Bound:
        if len(self._bound) >= MAX_BOUND:
            self.flush()
            self._bound.clear()
        served = bool(model)
        return _Bound(
            requests=REQUESTS.labels(endpoint, str(status), slug, model),
            added=_Tally(ADDED_LATENCY.labels(endpoint)),
            upstream=_Tally(UPSTREAM_LATENCY.labels(model)) if served else None,
            ttft=_Tally(TTFT.labels(model)) if served else None,
            spend=SPEND.labels(slug, model) if served else None,
            prompt_tokens=TOKENS.labels(slug, model, "prompt") if served else None,
            completion_tokens=TOKENS.labels(slug, model, "completion") if served else None,
        )


def retried(model: str) -> None:
    RETRIES.labels(model).inc()


def fell_back(model: str) -> None:
    FALLBACKS.labels(model).inc()


def circuits(open_now: set[str], known: set[str]) -> None:
    """Set the open-circuit gauge of every deployment seen open since start-up (1 open, 0 closed)."""
    for name in known:
        CIRCUIT_OPEN.labels(name).set(1 if name in open_now else 0)


def circuit_opened(name: str) -> None:
    CIRCUIT_OPENED.labels(name).inc()


def snapshot_current(at: float) -> None:
    SNAPSHOT_BUILT.set(at)


def snapshot_failed() -> None:
    SNAPSHOT_FAILURES.inc()


def ledger_spooled() -> None:
    LEDGER_SPOOLED.inc()


def replicas_short() -> None:
    REPLICAS_SHORT.inc()


def process_exited() -> None:
    """Drop this process's live gauges from the sums (multiprocess mode); its counters stay counted."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
