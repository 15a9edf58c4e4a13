"""One proxied request as the pipeline learns about it; it becomes the request's ledger event."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from apps.core.pricing import TIER_STANDARD
from apps.core.route import RouteDecision
from apps.core.snapshot import KeyPolicy
from apps.enforcement.limiter import Admission
from apps.gateway.response_cache import CacheRequest

if TYPE_CHECKING:
    from opentelemetry.trace import Span

ZERO = Decimal(0)


@dataclass(slots=True)
class Call:
    """What we learn about one proxied request, stage by stage."""

    request_id: str
    endpoint: str
    started: float  # perf_counter at arrival: latency and TTFT
    created_at: float  # wall clock at arrival
    key: KeyPolicy
    decision: RouteDecision = field(default_factory=RouteDecision)
    feature: str = ""
    end_user: str = ""
    requested_model: str = ""
    served_model: str = ""
    provider_id: int | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # prompt tokens the provider wrote to its prompt cache (Anthropic)
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of the completion tokens
    context_tokens: int = 0  # earlier turns a previous_response_id brings into the prompt (at most)
    # The items of a conversation the gateway holds (previous_response_id answered by a Chat-only provider).
    history: list[dict[str, Any]] | None = None
    service_tier: str = TIER_STANDARD
    usage_estimated: bool = False
    # A background response billed at its worst case: its id, so a worker can read its usage back later.
    background_response_id: str = ""
    # An attempt the provider may bill although we got no answer (a timeout after the request was sent).
    possibly_billed: bool = False
    cost: Decimal = ZERO
    counterfactual_cost: Decimal = ZERO
    ttft_ms: int | None = None
    status_code: int = 200
    error_code: str = ""
    streamed: bool = False
    # The endpoint the app called when it is not the one the pipeline runs ("messages": /v1/messages,
    # run as a chat completion); the ledger records this one.
    entry: str = ""
    # Spent on this request besides its own answer (a cascade's cheap call, possibly billed attempts):
    # settled with it.
    side_cost: Decimal = ZERO
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # rate limits, cache status
    admission: Admission | None = None
    cache: CacheRequest | None = None
    attempts: int = 0  # attempts recorded as possibly billed (their rows are <request id>-t<n>)
    upstream_s: float = 0.0  # seconds spent waiting on providers (metrics: the gateway's own time is the rest)
    traceparent: bytes | None = None  # the app's W3C trace context, passed upstream
    span: Span | None = None  # the request's trace span (None unless tracing is on: apps/gateway/tracing.py)
    # What replaying the ledger needs (apps/opportunities), never the prompt itself: see ``stages.cache.note_replay``.
    cache_key: str = ""
    prefix_key: str = ""
    prefix_tokens: int = 0
    embedding_key: str = ""
    max_tokens: int | None = None
    turns: int = 0

    @property
    def route(self) -> str:
        """The routing decision as ``X-Route`` says it."""
        return self.decision.text()

    def route_header(self) -> tuple[bytes, bytes]:
        return (b"x-route", self.decision.text().encode("ascii", "replace"))

    def side_row(self, suffix: str, **changes: Any) -> Call:
        """Another ledger row of this request (``<request id>-<suffix>``): a cascade's cheap call, an attempt."""
        return dataclasses.replace(
            self,
            request_id=f"{self.request_id}-{suffix}",
            admission=None,
            cache=None,
            extra_headers=[],
            upstream_s=0.0,
            **changes,
        )

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def event(self) -> dict[str, Any]:
        """The ledger event, as the pipeline knows it. The consumer fits every field to its column
        (``apps.core.events.ledger_event_clean``) before it reaches Postgres; cleaning it here as well cost
        the hot path about 4% of a request's instructions and protected nothing the consumer does not.
        Amounts go as text, exactly: JSON has no decimal type."""
        decision = self.decision
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "organization_id": self.key.organization_id,
            "project_id": self.key.project_id,
            "api_key_id": self.key.id,
            "provider_id": self.provider_id,
            "endpoint": self.entry or self.endpoint,
            "feature": self.feature,
            "end_user": self.end_user,
            "requested_model": self.requested_model,
            "served_model": self.served_model,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "service_tier": self.service_tier,
            "usage_estimated": self.usage_estimated,
            "background_response_id": self.background_response_id,
            "cost": str(self.cost),
            "counterfactual_cost": str(self.counterfactual_cost),
            "latency_ms": self.elapsed_ms(),
            "ttft_ms": self.ttft_ms,
            "status_code": self.status_code,
            "error_code": self.error_code,
            "streamed": self.streamed,
            "cache_hit": decision.cache_hit,
            "route": decision.text(),
            "decision": decision.as_json(),
            "route_rule_id": decision.rule_id,
            "possibly_billed": self.possibly_billed,
            "cache_key": self.cache_key,
            "prefix_key": self.prefix_key,
            "prefix_tokens": self.prefix_tokens,
            "embedding_key": self.embedding_key,
            "max_tokens": self.max_tokens,
            "turns": self.turns,
        }
