"""OpenTelemetry traces of gateway requests, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

One span per proxied request, named and attributed as the GenAI semantic
conventions say (operation, requested and served model, provider, tokens) plus
our own (cost, project, route, cache); child spans for the cache lookup, the
admission and each upstream attempt. The app's W3C ``traceparent`` is the
request span's parent, and each attempt sends the provider its own
``traceparent``. With tracing off the request carries no span, every helper
here returns at its first line, and the app's ``traceparent`` is passed upstream
unchanged.

The exporter is OTLP over HTTP, configured by the standard ``OTEL_*``
variables (endpoint, headers, ``OTEL_SERVICE_NAME``); spans are sent in
batches from a background thread, never on the event loop.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from apps.core.request import ENDPOINT_CHAT, ENDPOINT_COMPLETIONS
from apps.gateway.call import Call

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

# The GenAI conventions' operation name for each endpoint.
OPERATIONS = {ENDPOINT_CHAT: "chat", ENDPOINT_COMPLETIONS: "text_completion"}
TRACER_NAME = "costcontrol.gateway"
_OFF: AbstractContextManager[None] = nullcontext()
# W3C trace context, version 00 (what is passed on; anything else is dropped and a new trace starts).
TRACEPARENT_RE = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def configure_from_environment() -> None:
    """Turn tracing on, exporting over OTLP/HTTP, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or _tracer is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or "costcontrol-gateway"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)


def use(provider: TracerProvider | None) -> None:
    """Trace into ``provider`` (None: tracing off). Tests hand in one with an in-memory exporter."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None


def shutdown() -> None:
    """Send the spans still queued (at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def app_traceparent(value: bytes | None) -> bytes | None:
    """The app's ``traceparent`` header if it is a well-formed one, else None."""
    if value is None or len(value) != 55 or not TRACEPARENT_RE.fullmatch(value):
        return None
    return value


def start_request(call: Call) -> None:
    """Open the request's span (child of the app's ``traceparent``, if it sent one) on ``call.span``."""
    if _tracer is None:
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = None
    if call.traceparent is not None:
        parent = TraceContextTextMapPropagator().extract({"traceparent": call.traceparent.decode("latin-1")})
    operation = OPERATIONS.get(call.endpoint, call.endpoint)
    call.span = _tracer.start_span(
        operation,
        context=parent,
        kind=SpanKind.SERVER,
        start_time=time.time_ns() - int(call.elapsed_s() * 1e9),
        attributes={"gen_ai.operation.name": operation, "costcontrol.request_id": call.request_id},
    )


def child(call: Call, name: str) -> AbstractContextManager[object]:
    """A child span of the request around a stage (``with tracing.child(call, "admission"):``)."""
    if call.span is None:
        return _OFF
    from opentelemetry import trace

    assert _tracer is not None
    span = _tracer.start_span(name, context=trace.set_span_in_context(call.span))
    return trace.use_span(span, end_on_exit=True, record_exception=False)


def start_attempt(call: Call, provider_name: str, model: str, attempt: int) -> Span | None:
    """An upstream attempt's span (ended by ``end_attempt``)."""
    if call.span is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    return _tracer.start_span(
        f"{OPERATIONS.get(call.endpoint, call.endpoint)} {model}",
        context=trace.set_span_in_context(call.span),
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": OPERATIONS.get(call.endpoint, call.endpoint),
            "gen_ai.provider.name": provider_name,
            "gen_ai.request.model": model,
            "costcontrol.attempt": attempt,
        },
    )


def upstream_traceparent(call: Call, attempt: Span | None) -> str | None:
    """The ``traceparent`` to send the provider: the attempt's span, or the app's own when tracing is off."""
    if attempt is None:
        return call.traceparent.decode("latin-1") if call.traceparent is not None else None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(attempt))
    return carrier.get("traceparent")


def end_attempt(attempt: Span, status: int, failure: str) -> None:
    from opentelemetry.trace import StatusCode

    if status:
        attempt.set_attribute("http.response.status_code", status)
    if failure or status >= 400:
        attempt.set_status(StatusCode.ERROR, failure or str(status))
        attempt.set_attribute("error.type", failure or str(status))
    attempt.end()


def end_request(call: Call, project_slug: str) -> None:
    """Close the request's span with what the request turned out to be (called once, by ``stages.record``)."""
    span, call.span = call.span, None
    if span is None:
        return
    from opentelemetry.trace import StatusCode

    operation = OPERATIONS.get(call.endpoint, call.endpoint)
    model = call.served_model or call.requested_model
    span.update_name(f"{operation} {model}" if model else operation)
    attributes: dict[str, str | int | float | bool] = {
        "gen_ai.request.model": call.requested_model,
        "gen_ai.usage.input_tokens": call.prompt_tokens,
        "gen_ai.usage.output_tokens": call.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": call.cached_tokens,
        "http.response.status_code": call.status_code,
        "costcontrol.cost_usd": float(call.cost + call.side_cost),
        "costcontrol.project": project_slug,
        "costcontrol.route": call.route,
        "costcontrol.streamed": call.streamed,
        "costcontrol.usage_estimated": call.usage_estimated,
    }
    if call.served_model:
        attributes["gen_ai.response.model"] = call.served_model
    if call.feature:
        attributes["costcontrol.feature"] = call.feature
    if call.decision.cache_hit:
        attributes["costcontrol.cache_hit"] = call.decision.cache_hit
    if call.ttft_ms is not None:
        attributes["costcontrol.ttft_ms"] = call.ttft_ms
    span.set_attributes(attributes)
    if call.status_code >= 400:
        span.set_status(StatusCode.ERROR, call.error_code)
        span.set_attribute("error.type", call.error_code or str(call.status_code))
    span.end()
