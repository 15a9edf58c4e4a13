"""The gateway's long-lived resources, made once at start-up and handed to every stage.

One ``Runtime`` per process: the Redis clients, the pooled HTTP session (behind
the egress policy), the limiter with its leases, the ledger and shadow writers,
the circuit breakers, the response cache, the shadow queue and the policy
snapshot store. ``Limits`` holds the settings a request reads, so no stage
reads Django's settings on the hot path.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from django.conf import settings

from apps.core import names
from apps.core.egress_http import EgressConnector
from apps.core.snapshot import Snapshot
from apps.core.upstream_http import UpstreamHttp
from apps.enforcement import redis_clients
from apps.enforcement.fastredis import ReplicaWait
from apps.enforcement.limiter import Limiter
from apps.enforcement.redis_clients import FastClient
from apps.gateway import tracing
from apps.gateway.breaker import Breakers
from apps.gateway.ledger_writer import LedgerWriter
from apps.gateway.metrics import GatewayMetrics, process_exited, replicas_short
from apps.gateway.policy import PolicyStore
from apps.gateway.response_cache import ResponseCache
from apps.gateway.shadow_queue import ShadowQueue
from apps.gateway.trial_queue import TrialQueue
from costcontrol.egress import egress_policy


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings requests read (see ``costcontrol/settings/base.py`` for each)."""

    prefix: str
    max_body_bytes: int
    max_upstream_body_bytes: int
    max_sse_event_bytes: int
    retry_base_seconds: float
    retry_max_seconds: float
    limits_fail_open: bool
    unknown_model_max_output: int
    database_url: str
    ready_max_snapshot_age: float

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            prefix=settings.REDIS_PREFIX,
            max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES,
            max_upstream_body_bytes=settings.GATEWAY_MAX_UPSTREAM_BODY_BYTES,
            max_sse_event_bytes=settings.GATEWAY_MAX_SSE_EVENT_BYTES,
            retry_base_seconds=settings.GATEWAY_RETRY_BASE_SECONDS,
            retry_max_seconds=settings.GATEWAY_RETRY_MAX_SECONDS,
            limits_fail_open=settings.GATEWAY_LIMITS_FAIL_OPEN,
            unknown_model_max_output=settings.GATEWAY_UNKNOWN_MODEL_MAX_OUTPUT_TOKENS,
            database_url=settings.DATABASE_URL,
            ready_max_snapshot_age=settings.GATEWAY_READY_MAX_SNAPSHOT_AGE_SECONDS,
        )


@dataclass(slots=True)
class Runtime:
    limits: Limits
    redis: aioredis.Redis  # pub/sub and the rare commands (breakers, cascade labels)
    fast_redis: FastClient  # every per-request command
    http: aiohttp.ClientSession  # shadow and trial calls (off the request path)
    upstream: UpstreamHttp  # the request path's calls to providers (apps/core/upstream_http.py)
    limiter: Limiter
    ledger: LedgerWriter
    shadow_writer: LedgerWriter
    held_writer: LedgerWriter  # the durable copy of the responses we hold (apps.ledger.held_responses)
    breakers: Breakers
    cache: ResponseCache
    shadows: ShadowQueue
    trial_writer: LedgerWriter
    trials: TrialQueue
    policy: PolicyStore
    # Requests waiting on each deployment in this process (for least-in-flight balancing).
    in_flight: Counter[str]
    metrics: GatewayMetrics

    @property
    def snapshot(self) -> Snapshot:
        return self.policy.current

    @classmethod
    async def start(cls, build_snapshot: Callable[[int], Snapshot]) -> Runtime:
        """Open every resource, load the Lua scripts and the first snapshot (``build_snapshot`` is the
        control plane's adapter, run in a thread)."""
        limits = Limits.from_settings()
        prefix = limits.prefix
        tracing.configure_from_environment()
        redis = redis_clients.async_client(settings.REDIS_URL, max_connections=512)
        # A cluster client reads its slot map here: its pub/sub (policy, breakers) needs it to subscribe.
        await redis.initialize()
        # Every upstream URL is tenant-set: both HTTP clients connect only to addresses this policy admits.
        egress = egress_policy()
        http = aiohttp.ClientSession(
            connector=EgressConnector(egress, limit=0, keepalive_timeout=60, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
                sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS,
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        # Per-request commands go through the lean client; pub/sub (policy) keeps redis-py.
        fast_redis = redis_clients.fast_client(
            settings.REDIS_URL,
            command_timeout=settings.GATEWAY_REDIS_TIMEOUT_SECONDS,
            wait=ReplicaWait(settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_TIMEOUT_MS, on_short=replicas_short),
        )
        limiter = Limiter(fast_redis, prefix, leases=settings.GATEWAY_LIMIT_LEASES)
        await limiter.load()
        limiter.start()
        # One spool folder per Redis server and prefix: a re-send must reach the stream it was meant for.
        target = hashlib.sha256(f"{settings.REDIS_URL}|{prefix}".encode()).hexdigest()[:16]
        spool = Path(settings.BASE_DIR) / "var" / "spool" / target
        ledger = LedgerWriter(fast_redis, names.ledger_stream(prefix), spool)
        ledger.start()
        # The breakers' commands get the same bound as admission; their pub/sub stays on ``redis``.
        breaker_redis = redis_clients.async_client(
            settings.REDIS_URL,
            max_connections=64,
            socket_timeout=settings.GATEWAY_REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.GATEWAY_REDIS_TIMEOUT_SECONDS,
        )
        breakers = Breakers(
            breaker_redis,
            redis,
            prefix,
            failures=settings.GATEWAY_BREAKER_FAILURES,
            window_seconds=settings.GATEWAY_BREAKER_WINDOW_SECONDS,
            cooldown_seconds=settings.GATEWAY_BREAKER_COOLDOWN_SECONDS,
            poll_seconds=settings.GATEWAY_POLICY_POLL_SECONDS,
        )
        await breakers.start()
        # Shadow comparisons get their own stream (and spool): they are not ledger rows.
        shadow_writer = LedgerWriter(fast_redis, names.shadow_stream(prefix), spool / "shadow")
        shadow_writer.start()
        held_writer = LedgerWriter(fast_redis, names.held_responses_stream(prefix), spool / "responses")
        held_writer.start()
        shadows = ShadowQueue(
            http, shadow_writer.write, size=settings.GATEWAY_SHADOW_QUEUE, workers=settings.GATEWAY_SHADOW_WORKERS
        )
        shadows.start()
        cache = ResponseCache(fast_redis, settings.DATABASE_URL, prefix)
        trial_writer = LedgerWriter(fast_redis, names.trial_stream(prefix), spool / "trials")
        trial_writer.start()
        trials = TrialQueue(
            http,
            trial_writer.write,
            cache,
            size=settings.GATEWAY_SHADOW_QUEUE,
            workers=settings.GATEWAY_SHADOW_WORKERS,
            per_second=settings.GATEWAY_TRIAL_JOBS_PER_SECOND,
        )
        trials.start()
        policy = PolicyStore(redis, prefix, build_snapshot, poll_seconds=settings.GATEWAY_POLICY_POLL_SECONDS)
        await policy.start()
        metrics = GatewayMetrics()
        metrics.start()
        return cls(
            limits=limits,
            redis=redis,
            fast_redis=fast_redis,
            http=http,
            upstream=UpstreamHttp(egress, connect_timeout=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS),
            limiter=limiter,
            ledger=ledger,
            shadow_writer=shadow_writer,
            held_writer=held_writer,
            breakers=breakers,
            cache=cache,
            shadows=shadows,
            trial_writer=trial_writer,
            trials=trials,
            policy=policy,
            in_flight=Counter(),
            metrics=metrics,
        )

    async def close(self) -> None:
        """Stop the background tasks (leases go back), then close the connections."""
        await self.policy.stop()
        await self.shadows.stop()
        await self.shadow_writer.stop()
        await self.trials.stop()
        await self.trial_writer.stop()
        await self.held_writer.stop()
        await self.breakers.stop()
        await self.limiter.stop()
        await self.ledger.stop()
        await self.metrics.stop()
        await self.http.close()
        self.upstream.close()
        await self.cache.close()
        await self.fast_redis.close()
        await self.redis.aclose()
        tracing.shutdown()
        process_exited()
