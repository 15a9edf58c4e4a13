"""The data plane: a lean ASGI app for the OpenAI-compatible /v1 API.

Per request: authenticate the key against the in-memory policy snapshot,
validate, resolve the model to a provider, forward (streaming passes chunks
through as they arrive), then append one ledger event to the Redis stream.
No Django request handling, no ORM, no blocking call on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import hashlib
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from apps.core import names
from apps.core.apikeys import check_key, presented_key
from apps.core.egress_http import EgressConnector
from apps.core.errors import (
    GatewayError,
    invalid_api_key,
    method_not_allowed,
    model_not_allowed,
    model_not_found,
    request_too_large,
    upstream_unavailable,
)
from apps.core.events import clean_count, ledger_event_clean
from apps.core.pricing import PriceRow
from apps.core.request import (
    ENDPOINT_CHAT,
    ENDPOINT_COMPLETIONS,
    ENDPOINT_EMBEDDINGS,
    WorstCase,
    attribution,
    model_worst_case,
    prompt_estimate,
    validate,
)
from apps.core.text import answer_text, choice_text, completion_estimate
from apps.enforcement.fastredis import FastPipeline, FastRedis
from apps.enforcement.limiter import Admission, Limiter
from apps.gateway.breaker import Breakers, deployment
from apps.gateway.cache import (
    CacheHit,
    CacheRequest,
    ResponseCache,
    StreamRecorder,
    cache_request,
    sse_from_completion,
)
from apps.gateway.ledger_writer import LedgerWriter
from apps.gateway.policy import KeyPolicy, PolicyStore, ProjectPolicy, ProviderTarget, Snapshot
from apps.gateway.shadow import ShadowJob, ShadowQueue
from apps.gateway.validation import parse_body
from apps.routing.engine import (
    CascadeView,
    RequestFacts,
    RuleView,
    TargetView,
    confidence,
    first_match,
    normalize_text,
    split_order,
)
from costcontrol.egress import egress_policy

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

FORWARD_PATHS = {
    "/v1/chat/completions": ENDPOINT_CHAT,
    "/v1/completions": ENDPOINT_COMPLETIONS,
    "/v1/embeddings": ENDPOINT_EMBEDDINGS,
}
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
ZERO = Decimal(0)
# Upstream answers worth another try (same target after a backoff, then the next target).
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class Call:
    """What we learn about one proxied request; becomes its ledger event."""

    request_id: str
    endpoint: str
    started: float
    created_at: float
    key: KeyPolicy
    feature: str = ""
    end_user: str = ""
    requested_model: str = ""
    served_model: str = ""
    provider_id: int | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    # An attempt the provider may bill although we got no answer (a timeout after the request was sent).
    possibly_billed: bool = False
    cost: Decimal = ZERO
    counterfactual_cost: Decimal = ZERO
    ttft_ms: int | None = None
    status_code: int = 200
    error_code: str = ""
    streamed: bool = False
    route: str = ""
    rule_id: int | None = None
    # Spent on this request besides its own answer (a cascade's cheap call): settled with it.
    side_cost: Decimal = ZERO
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    admission: Admission | None = None
    cache: CacheRequest | None = None
    cache_hit: str = ""
    attempts: int = 0  # attempts recorded as possibly billed (their rows are <request id>-t<n>)

    def event(self) -> dict[str, Any]:
        """The ledger event, every field fitted to its column (one bad value must not stop the ingest)."""
        return ledger_event_clean(
            {
                "request_id": self.request_id,
                "created_at": self.created_at,
                "organization_id": self.key.organization_id,
                "project_id": self.key.project_id,
                "api_key_id": self.key.id,
                "provider_id": self.provider_id,
                "endpoint": self.endpoint,
                "feature": self.feature,
                "end_user": self.end_user,
                "requested_model": self.requested_model,
                "served_model": self.served_model,
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "completion_tokens": self.completion_tokens,
                "usage_estimated": self.usage_estimated,
                "cost": str(self.cost),
                "counterfactual_cost": str(self.counterfactual_cost),
                "latency_ms": int((time.perf_counter() - self.started) * 1000),
                "ttft_ms": self.ttft_ms,
                "status_code": self.status_code,
                "error_code": self.error_code,
                "streamed": self.streamed,
                "cache_hit": self.cache_hit,
                "route": self.route,
                "route_rule_id": self.rule_id,
                "possibly_billed": self.possibly_billed,
            }
        )

    def route_header(self) -> tuple[bytes, bytes]:
        return (b"x-route", self.route.encode("ascii", "replace"))


@dataclass(frozen=True, slots=True)
class Target:
    """One model on one provider, priced; ``counterfactual_price`` is what the app asked for would cost."""

    provider: ProviderTarget
    model: str
    price: PriceRow | None
    counterfactual_price: PriceRow | None


@dataclass(slots=True)
class Plan:
    """Where a request goes: targets in order (the first, then fallbacks), plus a cascade and a shadow."""

    targets: list[Target]
    rule: RuleView | None = None
    cheap: Target | None = None  # a cascade asks this one first
    shadow: Target | None = None


@dataclass(slots=True)
class Answer:
    """What one upstream attempt returned; ``response`` is an open stream (status 200) to relay."""

    target: Target
    status: int
    body: bytes
    retry_after: str | None
    response: aiohttp.ClientResponse | None = None


class Gateway:
    """ASGI callable for /v1/*; also answers the lifespan protocol."""

    def __init__(self) -> None:
        self.redis: aioredis.Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self.policy: PolicyStore | None = None
        self.ledger: LedgerWriter | None = None
        self.limiter: Limiter | None = None
        self.cache: ResponseCache | None = None
        self.fast_redis: FastRedis | None = None
        self.breakers: Breakers | None = None
        self.shadows: ShadowQueue | None = None
        self.shadow_writer: LedgerWriter | None = None
        # Requests waiting on each deployment in this process (for least-in-flight balancing).
        self.in_flight: Counter[str] = Counter()
        self._startup_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------

    async def startup(self) -> None:
        async with self._startup_lock:
            if self.policy is not None:
                return
            self.redis = aioredis.Redis.from_url(settings.REDIS_URL, max_connections=512)
            # Every upstream URL is tenant-set: connect only to addresses the egress policy admits.
            self.http = aiohttp.ClientSession(
                connector=EgressConnector(egress_policy(), limit=0, keepalive_timeout=60, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
                    sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            # Per-request commands go through the lean client; pub/sub (policy) keeps redis-py.
            self.fast_redis = FastRedis(settings.REDIS_URL, command_timeout=settings.GATEWAY_REDIS_TIMEOUT_SECONDS)
            self.cache = ResponseCache(self.fast_redis, settings.DATABASE_URL, settings.REDIS_PREFIX)
            self.limiter = Limiter(self.fast_redis, settings.REDIS_PREFIX, leases=settings.GATEWAY_LIMIT_LEASES)
            await self.limiter.load()
            self.limiter.start()
            # One spool folder per Redis server and prefix: a re-send must reach the stream it was meant for.
            target = hashlib.sha256(f"{settings.REDIS_URL}|{settings.REDIS_PREFIX}".encode()).hexdigest()[:16]
            spool = Path(settings.BASE_DIR) / "var" / "spool" / target
            self.ledger = LedgerWriter(self.fast_redis, names.ledger_stream(settings.REDIS_PREFIX), spool)
            self.ledger.start()
            self.breakers = Breakers(
                self.redis,
                settings.REDIS_PREFIX,
                failures=settings.GATEWAY_BREAKER_FAILURES,
                window_seconds=settings.GATEWAY_BREAKER_WINDOW_SECONDS,
                cooldown_seconds=settings.GATEWAY_BREAKER_COOLDOWN_SECONDS,
                poll_seconds=settings.GATEWAY_POLICY_POLL_SECONDS,
            )
            await self.breakers.start()
            # Shadow comparisons get their own stream (and spool): they are not ledger rows.
            self.shadow_writer = LedgerWriter(
                self.fast_redis, names.shadow_stream(settings.REDIS_PREFIX), spool / "shadow"
            )
            self.shadow_writer.start()
            self.shadows = ShadowQueue(
                self.http,
                self.shadow_writer.write,
                size=settings.GATEWAY_SHADOW_QUEUE,
                workers=settings.GATEWAY_SHADOW_WORKERS,
            )
            self.shadows.start()
            policy = PolicyStore(self.redis, settings.GATEWAY_POLICY_POLL_SECONDS)
            await policy.start()
            self.policy = policy
            # What start-up loaded (Django, the snapshot, ~120k objects) lives as long as the process.
            # Left to the collector, every full collection walks all of it: 60-75 ms pauses every
            # couple of seconds under load on the dev box, which were the gateway's whole p99.
            # Collect start-up's garbage once, then keep the rest out of future collections.
            gc.collect()
            gc.freeze()

    async def shutdown(self) -> None:
        if self.policy:
            await self.policy.stop()
        if self.shadows:
            await self.shadows.stop()
        if self.shadow_writer:
            await self.shadow_writer.stop()
        if self.breakers:
            await self.breakers.stop()
        if self.limiter:
            await self.limiter.stop()
        if self.ledger:
            await self.ledger.stop()
        if self.http:
            await self.http.close()
        if self.cache:
            await self.cache.close()
        if self.fast_redis:
            await self.fast_redis.close()
        if self.redis:
            await self.redis.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- dispatch --------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.policy is None:
            await self.startup()
        path: str = scope["path"]
        method: str = scope["method"]
        request_id = "req_" + secrets.token_hex(12)
        try:
            endpoint = FORWARD_PATHS.get(path)
            if endpoint is not None:
                if method != "POST":
                    raise method_not_allowed(method, f"on {path}")
                await self._proxy(scope, receive, send, endpoint, request_id)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise method_not_allowed(method, f"on {path}")
                await self._models(scope, send, path, request_id)
            else:
                raise GatewayError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        except GatewayError as exc:
            await _send_error(send, exc, request_id)
        except Exception:
            logger.exception("unhandled gateway error on %s %s", method, path)
            await _send_error(
                send, GatewayError(500, "The gateway failed to process the request.", type="api_error"), request_id
            )

    # --- /v1/models --------------------------------------------------------

    async def _models(self, scope: Scope, send: Send, path: str, request_id: str) -> None:
        snapshot = self._snapshot()
        key = self._authenticate(snapshot, _header(scope, b"authorization"))
        project = snapshot.projects[key.project_id]
        visible = _visible_models(snapshot, project, key)
        if path == "/v1/models":
            body = {"object": "list", "data": [_model_object(m, owner) for m, owner in sorted(visible.items())]}
        else:
            model_id = path[len("/v1/models/") :]
            if model_id not in visible:
                raise model_not_found(model_id)
            body = _model_object(model_id, visible[model_id])
        # Lets operators (and tests) see which policy version a process serves.
        version = [(b"x-costcontrol-policy-version", str(snapshot.version).encode())]
        await _send_json(send, 200, orjson.dumps(body), request_id, version)

    # --- proxying ----------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, endpoint: str, request_id: str) -> None:
        snapshot = self._snapshot()
        headers = _headers(scope)
        key = self._authenticate(snapshot, headers.get(b"authorization"))
        call = Call(
            request_id=request_id,
            endpoint=endpoint,
            started=time.perf_counter(),
            created_at=time.time(),
            key=key,
        )
        feature = headers.get(b"x-feature", b"").decode("utf-8", "replace")
        end_user = headers.get(b"x-end-user", b"").decode("utf-8", "replace")
        call.feature, call.end_user = attribution(
            feature=feature, end_user=end_user, user=None, default_feature=key.default_feature
        )
        try:
            payload = parse_body(await _read_body(receive))
            user = payload.get("user")
            if user:
                call.feature, call.end_user = attribution(
                    feature=feature, end_user=end_user, user=user, default_feature=key.default_feature
                )
            validate(endpoint, payload)
            call.requested_model = payload["model"]
            call.streamed = bool(payload.get("stream")) and endpoint != ENDPOINT_EMBEDDINGS
            call.prompt_tokens = prompt_estimate(endpoint, payload)
            plan = self._plan(snapshot, call, endpoint, payload)
            target = plan.targets[0]
            payload["model"] = target.model
            call.served_model = target.model
            call.provider_id = target.provider.id
            cache_headers: list[tuple[bytes, bytes]] = []
            if endpoint == ENDPOINT_CHAT:
                call.cache = self._cache_plan(snapshot, call, payload, headers)
                if call.cache is not None:
                    hit = await self._cache_lookup(call.cache)
                    if hit is not None:
                        await self._serve_from_cache(send, call, target, payload, hit)
                        return
                    cache_headers = [(b"x-cache", b"miss" if call.cache.read else b"bypass")]
                elif snapshot.cache_policy(key.project_id, call.feature) is not None:
                    cache_headers = [(b"x-cache", b"bypass")]
            call.admission = await self._admit(snapshot, call, plan, endpoint, payload)
            call.extra_headers = [*call.admission.headers, *cache_headers]
            if plan.cheap is not None and await self._cascade(send, call, plan, payload):
                return
            if call.streamed:
                await self._forward_stream(send, receive, call, plan, endpoint, payload)
            else:
                await self._forward(send, call, plan, endpoint, payload)
        except GatewayError as exc:
            call.status_code = exc.status
            call.error_code = exc.code or exc.type
            await asyncio.gather(_send_error(send, exc, request_id), self._record(call))
        except Exception:
            call.status_code = 500
            call.error_code = "gateway_error"
            await self._record(call)
            raise

    def _cache_plan(
        self, snapshot: Snapshot, call: Call, payload: dict[str, Any], headers: dict[bytes, bytes]
    ) -> CacheRequest | None:
        policy = snapshot.cache_policy(call.key.project_id, call.feature)
        if policy is None:
            return None
        return cache_request(
            project_id=call.key.project_id,
            policy=policy,
            payload=payload,
            cache_control=headers.get(b"cache-control", b"").decode("latin-1"),
            namespace=headers.get(b"x-cache-namespace", b"").decode("utf-8", "replace"),
            end_user=call.end_user,
        )

    async def _cache_lookup(self, request: CacheRequest) -> CacheHit | None:
        assert self.cache is not None
        try:
            return await self.cache.lookup(request)
        except Exception:
            # A cache that cannot answer is a miss, never a failed request.
            logger.exception("cache lookup failed; forwarding")
            return None

    async def _serve_from_cache(
        self, send: Send, call: Call, target: Target, payload: dict[str, Any], hit: CacheHit
    ) -> None:
        body = {**hit.body, "id": "chatcmpl-" + call.request_id[4:], "created": int(time.time())}
        usage = body.get("usage")
        if isinstance(usage, dict):
            call.prompt_tokens = clean_count(usage.get("prompt_tokens")) or call.prompt_tokens
            call.completion_tokens = clean_count(usage.get("completion_tokens"))
        call.cost = ZERO
        if target.counterfactual_price is not None:
            call.counterfactual_cost = target.counterfactual_price.cost(
                prompt_tokens=call.prompt_tokens, cached_tokens=0, completion_tokens=call.completion_tokens
            )
        call.cache_hit = hit.kind
        call.route = f"cache:{hit.kind}"
        call.rule_id = None  # the cache answered, not the rule's model: the rule's figures stay about routing
        call.provider_id = None
        call.served_model = str(body.get("model") or target.model)
        headers = [(b"x-request-id", call.request_id.encode()), (b"x-cache", f"hit-{hit.kind}".encode())]
        if hit.similarity is not None:
            headers.append((b"x-cache-similarity", f"{hit.similarity:.4f}".encode()))
        call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
        await _send_completion(send, call, payload, body, headers)
        await self._record(call, cache_hit=hit)

    async def _admit(
        self, snapshot: Snapshot, call: Call, plan: Plan, endpoint: str, payload: dict[str, Any]
    ) -> Admission:
        """Reserve the worst case on every budget and rate limit that applies (one Redis round trip).

        The worst case is the dearest target the plan may end on, plus the cheap
        call when a cascade asks one first.
        """
        assert self.limiter is not None
        enforcement = snapshot.enforcement_for(call.key)
        budgets = enforcement.budgets(feature=call.feature, end_user=call.end_user)
        limits = list(enforcement.rate_limits)
        if not budgets and not limits:
            return Admission(request_id=call.request_id, second=int(call.created_at))
        worst_usd, worst_tokens = ZERO, call.prompt_tokens
        for target in plan.targets:
            usd, worst = _worst_case(target, endpoint, payload)
            worst_usd, worst_tokens = max(worst_usd, usd), max(worst_tokens, worst.tokens)
        if plan.cheap is not None:
            usd, worst = _worst_case(plan.cheap, endpoint, payload)
            worst_usd, worst_tokens = worst_usd + usd, worst_tokens + worst.tokens
        try:
            admission = await self.limiter.admit(
                request_id=call.request_id,
                budgets=budgets,
                rate_limits=limits,
                worst_case_usd=worst_usd,
                worst_case_tokens=worst_tokens,
            )
        except (RedisError, OSError):
            if settings.GATEWAY_LIMITS_FAIL_OPEN:
                logger.warning("limits unavailable; failing open for %s", call.request_id)
                call.route += ";limits-unchecked"
                return Admission(request_id=call.request_id, second=int(call.created_at))
            raise GatewayError(
                503,
                "Budget and rate-limit checks are unavailable right now; the request was not sent.",
                type="api_error",
                code="limits_unavailable",
            ) from None
        if admission.shadow_blocked:
            call.route += ";would-block:" + ",".join(f"budget:{b.id}" for b in admission.shadow_blocked)
        return admission

    def _snapshot(self) -> Snapshot:
        assert self.policy is not None
        return self.policy.current

    def _authenticate(self, snapshot: Snapshot, authorization: bytes | None) -> KeyPolicy:
        token, lookup_id = presented_key(authorization.decode("latin-1") if authorization else None)
        key = snapshot.keys.get(lookup_id)
        if key is None:
            raise invalid_api_key()
        check_key(token, key.key_hash, revoked=key.revoked, expires_at=key.expires_at, now=time.time())
        return key

    # --- routing -------------------------------------------------------------

    def _plan(self, snapshot: Snapshot, call: Call, endpoint: str, payload: dict[str, Any]) -> Plan:
        """Apply the project's first matching routing rule, or serve the requested model."""
        key, requested = call.key, call.requested_model
        if key.allowed_models and requested not in key.allowed_models:
            raise model_not_allowed(requested)
        project = snapshot.projects[key.project_id]
        today = dt.datetime.fromtimestamp(call.created_at, dt.UTC).date()
        default = self._default_targets(snapshot, project, requested, today, call)
        rules = snapshot.rules.get(project.id)
        rule = None
        if rules:
            facts = RequestFacts(
                model=requested,
                feature=call.feature,
                end_user=call.end_user,
                api_key_id=key.id,
                prompt_tokens=call.prompt_tokens,
                payload=payload,
            )
            rule = first_match(rules, facts)
        if rule is None:
            if not default:
                raise model_not_found(requested)
            return Plan(targets=default)

        # Without us the app would have paid for the model it asked for (if that is a model we price).
        counterfactual = default[0].counterfactual_price if default else None

        def priced(view: TargetView) -> Target:
            provider = snapshot.providers[view.provider_id]
            price = snapshot.price(provider.id, view.model, today)
            return Target(provider, view.model, price, counterfactual or price)

        call.rule_id = rule.id
        call.route = f"route:{rule.id}:{rule.action}"
        fallbacks = [priced(view) for view in rule.fallbacks]
        plan = Plan(targets=[], rule=rule)
        if rule.action == "split" and rule.primaries:
            order = split_order(rule.primaries)
            plan.targets = [priced(view) for view in order] + fallbacks
            call.route += f":{order[0].model}"
        elif rule.action == "cascade" and len(rule.primaries) >= 2:
            plan.targets = [priced(rule.primaries[1]), *fallbacks]
            if endpoint == ENDPOINT_CHAT:
                plan.cheap = priced(rule.primaries[0])
            else:
                call.route += ":strong-only"  # confidence needs chat logprobs
        elif rule.primaries:
            plan.targets = [priced(rule.primaries[0]), *fallbacks]
        else:
            # A rule without its own model keeps the requested one (rules that only add fallbacks or a shadow).
            plan.targets = [*default, *fallbacks]
        if not plan.targets:
            raise model_not_found(requested)
        if rule.shadow is not None and rule.shadow_fraction > 0 and random.random() < rule.shadow_fraction:
            plan.shadow = priced(rule.shadow)
        return plan

    def _default_targets(
        self, snapshot: Snapshot, project: ProjectPolicy, requested: str, today: dt.date, call: Call
    ) -> list[Target]:
        """The requested model (or alias) on every provider that serves it: the first one, then fallbacks.

        The project's default provider goes first; the other deployments follow, the
        least busy in this process first.
        """
        alias = project.aliases.get(requested)
        if alias is not None:
            provider = snapshot.providers.get(alias[0])
            if provider is None:
                return []
            price = snapshot.price(provider.id, alias[1], today)
            # An alias names no model of its own: without us the app would have
            # paid for whatever it is pointed at.
            call.route = f"alias:{requested}"
            return [Target(provider, alias[1], price, price)]
        provider_ids = snapshot.org_models.get(project.organization_id, {}).get(requested)
        if not provider_ids:
            return []
        call.route = "direct"
        ids = list(provider_ids)
        if len(ids) > 1:
            ids.sort(key=lambda pid: (pid != project.default_provider_id, self.in_flight[deployment(pid, requested)]))
        targets = []
        for provider_id in ids:
            price = snapshot.price(provider_id, requested, today)
            targets.append(Target(snapshot.providers[provider_id], requested, price, price))
        return targets

    # --- upstream calls ------------------------------------------------------

    async def _upstream(
        self, call: Call, targets: list[Target], endpoint: str, payload: dict[str, Any], *, stream: bool
    ) -> Answer:
        """Try the targets in order, each with its provider's retries, skipping open circuits.

        Returns the first answer that is not worth retrying (success or the app's
        own error, e.g. a 400), else the last failure: the provider's error
        response passed through, or a gateway 502/503/504. Each target that
        failed is noted on the route.
        """
        assert self.breakers is not None
        skipped: list[str] = []
        last: Answer | GatewayError | None = None
        for target in targets:
            provider, model = target.provider, target.model
            if not await self.breakers.allow(provider.id, model):
                skipped.append(f"{model}@{provider.name}(circuit-open)")
                last = last or upstream_unavailable(
                    f"The provider {provider.name} keeps failing for {model}; it is paused (circuit open).",
                    status=503,
                    code="circuit_open",
                )
                continue
            body = orjson.dumps({**payload, "model": model})
            name = deployment(provider.id, model)
            reason = ""
            for attempt in range(provider.max_retries + 1):
                retry_after = None
                self.in_flight[name] += 1
                try:
                    answer = await self._attempt(target, endpoint, body, stream=stream)
                except TimeoutError as exc:
                    reason = "timeout"
                    last = upstream_unavailable(
                        f"The provider {provider.name} did not answer in time.", status=504, code="upstream_timeout"
                    )
                    if not isinstance(exc, aiohttp.ConnectionTimeoutError):
                        # The request reached the provider, which may still answer it and bill us.
                        await self._possibly_billed(call, target, endpoint, payload, last)
                except _UpstreamTooLarge as exc:
                    await self._possibly_billed(call, target, endpoint, payload, exc.error)
                    raise exc.error from None
                except aiohttp.ClientError as exc:
                    reason = "unreachable"
                    last = upstream_unavailable(f"Could not reach the provider {provider.name}: {exc}.")
                else:
                    if answer.status not in RETRYABLE_STATUS:
                        await self.breakers.success(provider.id, model)
                        if skipped or attempt:
                            call.route += "".join(f";failed:{note}" for note in skipped)
                            call.route += f";retries={attempt}" if attempt else ""
                        return answer
                    reason, retry_after, last = str(answer.status), answer.retry_after, answer
                finally:
                    self.in_flight[name] -= 1
                await self.breakers.failure(provider.id, model)
                if attempt < provider.max_retries:
                    delay = _backoff(attempt, retry_after)
                    if delay is None:
                        break  # the provider asks for a longer pause than we wait: try the next target
                    await asyncio.sleep(delay)
            skipped.append(f"{model}@{provider.name}({reason})")
        call.route += "".join(f";failed:{note}" for note in skipped)
        if isinstance(last, Answer):
            return last
        raise last or upstream_unavailable("No provider could take the request.")

    async def _possibly_billed(
        self, call: Call, target: Target, endpoint: str, payload: dict[str, Any], error: GatewayError
    ) -> None:
        """Record an attempt we gave up on that the provider may bill: its own ledger row, marked possibly
        billed, at the request's worst case on ``target`` (we cannot know how far the provider got). Its
        cost stays counted against the request's budgets (settled with the request)."""
        assert self.ledger is not None
        usd, worst = _worst_case(target, endpoint, payload)
        call.attempts += 1
        row = dataclasses.replace(
            call,
            request_id=f"{call.request_id}-t{call.attempts}",
            served_model=target.model,
            provider_id=target.provider.id,
            prompt_tokens=worst.prompt_tokens,
            cached_tokens=0,
            completion_tokens=worst.output_tokens,
            usage_estimated=True,
            possibly_billed=True,
            cost=usd,
            counterfactual_cost=ZERO,
            status_code=error.status,
            error_code=error.code or error.type,
            route=call.route + ":attempt",
            admission=None,
            cache=None,
            extra_headers=[],
        )
        call.side_cost += usd
        await self.ledger.write(row.event())

    async def _attempt(self, target: Target, endpoint: str, body: bytes, *, stream: bool) -> Answer:
        assert self.http is not None
        provider = target.provider
        url, headers = _upstream_url(provider, endpoint), _upstream_headers(provider)
        if stream:
            resp = await self.http.post(
                url, data=body, headers=headers, timeout=provider.timeout, allow_redirects=False
            )
            if resp.status == 200:
                return Answer(target, 200, b"", None, resp)
            try:
                _refuse_redirect(resp)
                return Answer(target, resp.status, await _read_bounded(resp), resp.headers.get("retry-after"))
            finally:
                resp.release()
        async with asyncio.timeout(provider.total_timeout):
            async with self.http.post(
                url, data=body, headers=headers, timeout=provider.timeout, allow_redirects=False
            ) as resp:
                _refuse_redirect(resp)
                return Answer(target, resp.status, await _read_bounded(resp), resp.headers.get("retry-after"))

    async def _cascade(self, send: Send, call: Call, plan: Plan, payload: dict[str, Any]) -> bool:
        """Ask the cheap model first; answer with it (True) when it is confident, else escalate (False).

        The cheap call is always non-streamed (its confidence must be known before
        the first byte reaches the app); a kept answer is sent as a stream when the
        app asked for one. An escalated cheap call is its own ledger row.
        """
        assert plan.cheap is not None and plan.rule is not None and plan.rule.cascade is not None
        cheap, cascade = plan.cheap, plan.rule.cascade
        wants_logprobs = bool(payload.get("logprobs"))
        request = {**payload, "logprobs": True, "stream": False}
        request.pop("stream_options", None)
        side = Call(
            request_id=call.request_id + "-cheap",
            endpoint=call.endpoint,
            started=call.started,
            created_at=call.created_at,
            key=call.key,
            feature=call.feature,
            end_user=call.end_user,
            requested_model=call.requested_model,
            served_model=cheap.model,
            provider_id=cheap.provider.id,
            prompt_tokens=call.prompt_tokens,
            route=call.route + ":cheap",
            rule_id=call.rule_id,
        )
        reason = ""
        data: dict[str, Any] = {}
        try:
            answer = await self._upstream(side, [cheap], ENDPOINT_CHAT, request, stream=False)
        except GatewayError as exc:
            side.status_code, side.error_code, reason = exc.status, exc.code or exc.type, "cheap-failed"
        else:
            side.status_code = answer.status
            side.ttft_ms = int((time.perf_counter() - call.started) * 1000)
            if answer.status != 200:
                side.error_code, reason = _upstream_error_code(answer.body), "cheap-failed"
            else:
                data = _json_object(answer.body)
                usage = data.get("usage")
                if not _believable(usage):
                    side.completion_tokens = _estimate_completion(data)
                _apply_usage(side, cheap, usage)
                reason = await self._cascade_verdict(plan.rule.id, cascade, data)
        # Timed-out attempts of the cheap call the provider may bill are the request's to carry.
        call.side_cost += side.side_cost
        call.attempts += side.attempts
        if not reason.startswith("kept"):
            call.route += f":escalated({reason})"
            call.side_cost += side.cost
            side.route += f":escalated({reason})"
            side.counterfactual_cost = ZERO  # the app would not have made this call: its cost is the cascade's price
            assert self.ledger is not None
            await self.ledger.write(side.event())
            return False

        call.route = side.route[: -len(":cheap")] + f":{reason}"
        call.served_model, call.provider_id, call.ttft_ms = cheap.model, cheap.provider.id, side.ttft_ms
        call.prompt_tokens, call.cached_tokens = side.prompt_tokens, side.cached_tokens
        call.completion_tokens, call.usage_estimated = side.completion_tokens, side.usage_estimated
        call.cost, call.counterfactual_cost = side.cost, side.counterfactual_cost
        if not wants_logprobs:
            for choice in data.get("choices") or ():
                choice["logprobs"] = None
        headers = [(b"x-request-id", call.request_id.encode()), call.route_header(), *call.extra_headers]
        await _send_completion(send, call, payload, data, headers)
        store = data if call.cache is not None and call.cache.write and _cacheable(data) else None
        await self._record(call, cache_store=store)
        self._shadow(call, plan, payload, answer_text(data))
        return True

    async def _cascade_verdict(self, rule_id: int, cascade: CascadeView, data: dict[str, Any]) -> str:
        """ "kept(…)" or why the cheap answer is escalated."""
        confidence = _confidence(data, cascade)
        if confidence is None:
            return "no-logprobs"
        if confidence < cascade.threshold:
            return f"confidence={confidence:.3f}<{cascade.threshold:g}"
        if cascade.escalate_new_labels:
            label = normalize_text(answer_text(data))
            if label not in cascade.labels and not await self._label_seen(rule_id, label):
                return "new-label"
        return f"kept(confidence={confidence:.3f})"

    async def _label_seen(self, rule_id: int, label: str) -> bool:
        assert self.redis is not None
        return bool(await self.redis.sismember(_labels_key(rule_id), label))

    async def _learn_label(self, rule_id: int, text: str) -> None:
        """Remember the strong model's answer as a known label for the rule's cascade."""
        assert self.redis is not None
        label = normalize_text(text)
        if label and len(label) <= 200:
            await self.redis.sadd(_labels_key(rule_id), label)

    def _shadow(self, call: Call, plan: Plan, payload: dict[str, Any], primary_text: str) -> None:
        """Queue the shadow copy of an answered request (never waits)."""
        if plan.shadow is None or plan.rule is None or call.status_code != 200 or self.shadows is None:
            return
        target = plan.shadow
        request = {**payload, "model": target.model, "stream": False}
        request.pop("stream_options", None)
        self.shadows.offer(
            ShadowJob(
                request_id=call.request_id,
                rule_id=plan.rule.id,
                organization_id=call.key.organization_id,
                project_id=call.key.project_id,
                url=_upstream_url(target.provider, call.endpoint),
                headers=_upstream_headers(target.provider),
                timeout=target.provider.timeout,
                payload=request,
                provider=target.provider,
                price=target.price,
                primary_model=call.served_model,
                primary_text=primary_text,
                primary_latency_ms=int((time.perf_counter() - call.started) * 1000),
                primary_cost=call.cost,
            )
        )

    # --- forwarding ------------------------------------------------------------

    async def _forward(self, send: Send, call: Call, plan: Plan, endpoint: str, payload: dict[str, Any]) -> None:
        answer = await self._upstream(call, plan.targets, endpoint, payload, stream=False)
        target, status, body = answer.target, answer.status, answer.body
        call.served_model, call.provider_id = target.model, target.provider.id
        call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
        call.status_code = status
        extra = [(b"retry-after", answer.retry_after.encode())] if answer.retry_after else []
        extra += [call.route_header(), *call.extra_headers]
        store = None
        text = ""
        if status >= 400:
            call.error_code = _upstream_error_code(body)
        else:
            data = _json_object(body)
            usage = data.get("usage")
            if not _believable(usage):
                call.completion_tokens = _estimate_completion(data)
            _apply_usage(call, target, usage)
            if call.cache is not None and call.cache.write and _cacheable(data):
                store = data
            if plan.shadow is not None or plan.cheap is not None:
                text = answer_text(data)
        await asyncio.gather(
            _send_json(send, status, body, call.request_id, extra), self._record(call, cache_store=store)
        )
        await self._after_answer(call, plan, payload, text)

    async def _after_answer(self, call: Call, plan: Plan, payload: dict[str, Any], text: str) -> None:
        """Shadow the request and, after an escalation, learn the strong model's label."""
        if call.status_code != 200:
            return
        self._shadow(call, plan, payload, text)
        if plan.cheap is not None and plan.rule is not None and plan.rule.cascade is not None:
            if plan.rule.cascade.escalate_new_labels and text:
                await self._learn_label(plan.rule.id, text)

    async def _forward_stream(
        self, send: Send, receive: Receive, call: Call, plan: Plan, endpoint: str, payload: dict[str, Any]
    ) -> None:
        stream_options = payload.get("stream_options") or {}
        client_wants_usage = bool(stream_options.get("include_usage"))
        # Always ask for the usage chunk: it is how streams get billed exactly.
        payload["stream_options"] = {**stream_options, "include_usage": True}

        answer = await self._upstream(call, plan.targets, endpoint, payload, stream=True)
        target = answer.target
        call.served_model, call.provider_id = target.model, target.provider.id
        if answer.response is None:
            call.status_code = answer.status
            call.error_code = _upstream_error_code(answer.body)
            extra = [(b"retry-after", answer.retry_after.encode())] if answer.retry_after else []
            await asyncio.gather(
                _send_json(send, answer.status, answer.body, call.request_id, [*extra, call.route_header()]),
                self._record(call),
            )
            return

        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
        relay = _SseRelay(
            strip_usage_chunk=not client_wants_usage, max_event_bytes=settings.GATEWAY_MAX_SSE_EVENT_BYTES
        )
        resp = answer.response
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        *SSE_HEADERS,
                        (b"x-request-id", call.request_id.encode()),
                        call.route_header(),
                        *call.extra_headers,
                    ],
                }
            )
            try:
                async for chunk in resp.content.iter_any():
                    if call.ttft_ms is None:
                        call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
                    out = relay.feed(chunk)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if relay.overflowed:
                        # No event boundary within the bound: never buffer an upstream without end.
                        call.status_code = 502
                        call.error_code = "upstream_stream_truncated"
                        error = upstream_unavailable(
                            f"The provider's stream sent more than {settings.GATEWAY_MAX_SSE_EVENT_BYTES} bytes "
                            "without an event boundary; it was cut off.",
                            code="upstream_stream_truncated",
                        )
                        event = b"data: " + error.body() + b"\n\n"
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                        break
                    if disconnected.is_set():
                        call.status_code = 499
                        call.error_code = "client_disconnected"
                        break
            except (TimeoutError, aiohttp.ClientError):
                call.status_code = 502
                call.error_code = "upstream_stream_truncated"
                error = upstream_unavailable("The provider's stream ended early.", code="upstream_stream_truncated")
                await send(
                    {"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n", "more_body": True}
                )
        finally:
            watcher.cancel()
            resp.release()

        tail = relay.flush()
        if call.status_code == 200 and not relay.done:
            call.status_code = 502
            call.error_code = "upstream_stream_truncated"
        if not _believable(relay.usage):
            # No usable usage chunk (a disconnect, a truncated or cut-off stream, a provider that omits it
            # or garbles it): bill what we saw, estimated, never $0.
            call.completion_tokens = relay.estimate_completion_tokens()
        _apply_usage(call, target, relay.usage)
        store, completion = None, None
        if call.status_code == 200 and relay.done:
            if call.cache is not None and call.cache.write or plan.shadow is not None or plan.cheap is not None:
                completion = relay.completion()
            if completion is not None and call.cache is not None and call.cache.write and _cacheable(completion):
                store = completion
        await asyncio.gather(
            send({"type": "http.response.body", "body": tail, "more_body": False}),
            self._record(call, cache_store=store),
        )
        await self._after_answer(call, plan, payload, answer_text(completion) if completion else "")

    async def _record(
        self, call: Call, *, cache_store: dict[str, Any] | None = None, cache_hit: CacheHit | None = None
    ) -> None:
        """Write the ledger event, settle the reservation and queue cache work: one Redis round trip."""
        assert self.ledger is not None and self.limiter is not None and self.cache is not None
        admission, call.admission = call.admission, None
        limiter, cache, cache_request_ = self.limiter, self.cache, call.cache
        reserved = admission is not None and admission.reserved
        if not reserved and cache_store is None and cache_hit is None:
            await self.ledger.write(call.event())
            return

        async def also(pipeline: FastPipeline) -> None:
            if reserved:
                assert admission is not None
                await limiter.settle(
                    admission,
                    actual_usd=call.cost + call.side_cost,
                    actual_tokens=call.prompt_tokens + call.completion_tokens,
                    pipeline=pipeline,
                )
            if cache_request_ is not None and cache_store is not None:
                cache.queue_store(
                    pipeline, cache_request_, body=cache_store, model=call.served_model, cost=str(call.cost)
                )
            if cache_request_ is not None and cache_hit is not None:
                cache.queue_hit(pipeline, cache_request_, cache_hit)

        await self.ledger.write(call.event(), also=also)


class _SseRelay:
    """Passes complete SSE events through and notes the usage chunk.

    Only whole events are forwarded, so the usage-only chunk (``choices: []``)
    we forced upstream can be removed when the app did not ask for it. Events
    are kept so completion tokens can be counted if the provider sends no usage,
    up to ``max_event_bytes`` x 8 of them (past that only their size is counted).
    An upstream that sends ``max_event_bytes`` without an event boundary sets
    ``overflowed``: the caller cuts the stream off, and nothing more is buffered.
    """

    def __init__(self, *, strip_usage_chunk: bool, max_event_bytes: int) -> None:
        self._strip = strip_usage_chunk
        self._max_event = max_event_bytes
        self._max_kept = 8 * max_event_bytes
        self._buffer = b""
        self._events: list[bytes] = []
        self._kept = 0  # bytes in _events
        self._unkept = 0  # bytes of events passed on but not kept (past _max_kept)
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.overflowed = False

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        cut = self._buffer.rfind(b"\n\n")
        if cut < 0:
            if len(self._buffer) > self._max_event:
                self.overflowed = True
                self._buffer = b""
            return b""
        complete, self._buffer = self._buffer[: cut + 2], self._buffer[cut + 2 :]
        if len(self._buffer) > self._max_event:
            self.overflowed = True
            self._buffer = b""
        if b'"usage"' not in complete and b"[DONE]" not in complete:
            self._keep(complete)
            return complete
        kept = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(b"data: [DONE]"):
                self.done = True
            elif b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event:
                data = _event_json(event)
                usage = data.get("usage") if data is not None else None
                if isinstance(usage, dict) and usage:
                    self.usage = usage
                    if self._strip and not data.get("choices"):  # type: ignore[union-attr]
                        continue
            self._keep(event)
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _keep(self, events: bytes) -> None:
        if self._kept + len(events) <= self._max_kept:
            self._events.append(events)
            self._kept += len(events)
        else:
            self._unkept += len(events)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def completion(self) -> dict[str, Any] | None:
        """The finished stream as one chat.completion (for the cache), or None if it cannot be rebuilt."""
        if self._unkept:
            return None
        recorder = StreamRecorder()
        for blob in self._events:
            for event in blob.split(b"\n\n"):
                data = _event_json(event)
                if data is not None:
                    recorder.add(data)
        return recorder.completion(self.usage)

    def estimate_completion_tokens(self) -> int:
        parts: list[str] = []
        for blob in self._events:
            for event in blob.split(b"\n\n"):
                data = _event_json(event)
                choices = data.get("choices") if data is not None else None
                if isinstance(choices, list):
                    parts.extend(choice_text(choice, "delta") for choice in choices)
        # Events past what we keep count by their size: more than their text, never less.
        return completion_estimate("".join(parts)) + self._unkept // 4


def _event_json(event: bytes) -> dict[str, Any] | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    return None
                return parsed if isinstance(parsed, dict) else None
    return None


# --- helpers -------------------------------------------------------------


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _read_body(receive: Receive) -> bytes:
    limit = settings.GATEWAY_MAX_BODY_BYTES
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(499, "The client closed the connection.", code="client_disconnected")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise request_too_large(limit)
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


class _UpstreamTooLarge(Exception):
    """A provider's answer past GATEWAY_MAX_UPSTREAM_BODY_BYTES; ``error`` is the 502 the app gets."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.error = upstream_unavailable(
            f"The provider's answer is larger than {limit} bytes; it was not read.", code="upstream_response_too_large"
        )


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body of a non-streamed answer, refusing one past the configured size."""
    limit = settings.GATEWAY_MAX_UPSTREAM_BODY_BYTES
    if resp.content_length is not None and resp.content_length > limit:
        raise _UpstreamTooLarge(limit)
    chunks, size = [], 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _UpstreamTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _watch_disconnect(receive: Receive, flag: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            flag.set()
            return


def _worst_case(target: Target, endpoint: str, payload: dict[str, Any]) -> tuple[Decimal, WorstCase]:
    """The most a request can cost (USD) and use (tokens) on ``target`` (the shared rule)."""
    worst = model_worst_case(
        endpoint, payload, target.model, unknown_model_max_output=settings.GATEWAY_UNKNOWN_MODEL_MAX_OUTPUT_TOKENS
    )
    usd = (
        target.price.cost(prompt_tokens=worst.prompt_tokens, cached_tokens=0, completion_tokens=worst.output_tokens)
        if target.price is not None
        else ZERO
    )
    return usd, worst


def _backoff(attempt: int, retry_after: str | None) -> float | None:
    """Seconds to wait before retry ``attempt + 1``: the provider's Retry-After when it gives one
    we are willing to wait, else exponential backoff with full jitter; None means do not wait here."""
    cap = settings.GATEWAY_RETRY_MAX_SECONDS
    if retry_after:
        try:
            wanted = float(retry_after)
        except ValueError:
            wanted = -1.0  # an HTTP date: fall back to our own backoff
        if wanted >= 0:
            return wanted if wanted <= cap else None
    return random.uniform(0, min(cap, settings.GATEWAY_RETRY_BASE_SECONDS * 2**attempt))


def _confidence(data: dict[str, Any], cascade: CascadeView) -> float | None:
    try:
        return confidence(data, tokens=cascade.tokens, aggregate=cascade.aggregate)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None  # malformed logprobs count as none


def _labels_key(rule_id: int) -> str:
    return names.cascade_labels(settings.REDIS_PREFIX, rule_id)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _believable(usage: Any) -> bool:
    """Whether a provider's ``usage`` is an object with non-negative integer prompt and completion counts."""
    if not isinstance(usage, dict):
        return False
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0


def _estimate_completion(data: dict[str, Any]) -> int:
    """Completion tokens of a non-streamed answer whose provider reported no usage."""
    choices = data.get("choices")
    parts = [choice_text(choice, "message") for choice in choices] if isinstance(choices, list) else []
    return completion_estimate("".join(parts))


def _apply_usage(call: Call, target: Target, usage: Any) -> None:
    """Take the provider's token counts (or keep our estimates) and price them.

    Usage is believed only when it is an object whose prompt and completion counts are
    non-negative integers (past the ledger's column they are capped); anything else
    from an upstream keeps our estimates and marks the row ``usage_estimated``.
    """
    if _believable(usage):
        call.prompt_tokens = clean_count(usage["prompt_tokens"])
        call.completion_tokens = clean_count(usage["completion_tokens"])
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        call.cached_tokens = min(clean_count(cached), call.prompt_tokens)
    else:
        call.usage_estimated = True
    counts = {
        "prompt_tokens": call.prompt_tokens,
        "cached_tokens": call.cached_tokens,
        "completion_tokens": call.completion_tokens,
    }
    if target.price is not None:
        call.cost = target.price.cost(**counts)
    else:
        call.route += ";unpriced"
    if target.counterfactual_price is not None:
        call.counterfactual_cost = target.counterfactual_price.cost(**counts)


def _cacheable(completion: dict[str, Any]) -> bool:
    """Only whole, unfiltered, well-formed answers are cached: no refusals, no content-filter stops."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), (str, type(None)))
            or choice.get("finish_reason") not in ("stop", "length", "tool_calls")
            or message.get("refusal")
        ):
            return False
    return True


def _upstream_error_code(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error") or {}
        return str(error.get("code") or error.get("type") or "upstream_error")[:100]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return "upstream_error"


class UpstreamRedirect(aiohttp.ClientError):
    """A provider answered with a redirect: never followed (it could point inside our network)."""


def _refuse_redirect(resp: aiohttp.ClientResponse) -> None:
    if 300 <= resp.status < 400:
        raise UpstreamRedirect(f"it answered {resp.status} (a redirect), and redirects are not followed")


def _upstream_url(provider: ProviderTarget, endpoint: str) -> str:
    return f"{provider.base_url}/{endpoint.replace('.', '/')}"


def _upstream_headers(provider: ProviderTarget) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if provider.secret:
        headers["Authorization"] = f"Bearer {provider.secret}"
    return headers


def _visible_models(snapshot: Snapshot, project: ProjectPolicy, key: KeyPolicy) -> dict[str, str]:
    """Model id -> owner shown in /v1/models: the project's aliases and its org's priced models."""
    visible: dict[str, str] = {}
    for model, provider_ids in snapshot.org_models.get(project.organization_id, {}).items():
        visible[model] = snapshot.providers[provider_ids[0]].name
    for alias in project.aliases:
        visible[alias] = "costcontrol"
    if key.allowed_models:
        visible = {m: o for m, o in visible.items() if m in key.allowed_models}
    return visible


def _model_object(model: str, owner: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}


async def _send_json(
    send: Send, status: int, body: bytes, request_id: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*JSON_HEADERS, (b"x-request-id", request_id.encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_completion(
    send: Send, call: Call, payload: dict[str, Any], completion: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    """Send a whole chat completion we already hold, as JSON or, when the app asked to stream, as SSE."""
    if call.streamed:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        events = sse_from_completion(completion, include_usage=include_usage, request_id=call.request_id)
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": [*JSON_HEADERS, *headers]})
        await send({"type": "http.response.body", "body": orjson.dumps(completion)})


async def _send_error(send: Send, exc: GatewayError, request_id: str) -> None:
    await _send_json(send, exc.status, exc.body(), request_id, exc.headers)
