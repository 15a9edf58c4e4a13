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
and reused, so recording a request is a dict lookup and a few increments.
"""

from __future__ import annotations

import os
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


@dataclass(slots=True)
class _Bound:
    """The label children one (endpoint, status, project, model) records into."""

    requests: Counter
    added: Histogram
    upstream: Histogram | None
    ttft: Histogram | None
    spend: Counter | None
    prompt_tokens: Counter | None
    completion_tokens: Counter | None


class GatewayMetrics:
    """One per process (on the ``Runtime``): records finished requests into pre-bound label children."""

    def __init__(self) -> None:
        self._bound: dict[tuple[str, int, int, str, str], _Bound] = {}

    def request(self, call: Call, slug: str, *, cache_result: str | None) -> None:
        """Record one finished request of the project ``slug`` (called once, by ``stages.record``)."""
        # A model label only for a model a provider of the project served (cache hits have none).
        model = call.served_model if call.provider_id is not None else ""
        key = (call.endpoint, call.status_code, call.key.project_id, slug, model)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._bind(call.endpoint, call.status_code, slug, model)
        bound.requests.inc()
        total = call.elapsed_s()
        bound.added.observe(max(total - call.upstream_s, 0.0))
        if bound.upstream is not None and call.upstream_s:
            bound.upstream.observe(call.upstream_s)
        if bound.ttft is not None and call.streamed and call.ttft_ms is not None:
            bound.ttft.observe(call.ttft_ms / 1000)
        spent = call.cost + call.side_cost
        if spent and bound.spend is not None:
            bound.spend.inc(float(spent))
        if bound.prompt_tokens is not None and call.prompt_tokens:
            bound.prompt_tokens.inc(call.prompt_tokens)
        if bound.completion_tokens is not None and call.completion_tokens:
            bound.completion_tokens.inc(call.completion_tokens)
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
            self._bound.clear()
        served = bool(model)
        return _Bound(
            requests=REQUESTS.labels(endpoint, str(status), slug, model),
            added=ADDED_LATENCY.labels(endpoint),
            upstream=UPSTREAM_LATENCY.labels(model) if served else None,
            ttft=TTFT.labels(model) if served else None,
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
