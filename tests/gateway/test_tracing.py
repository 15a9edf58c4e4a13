"""OpenTelemetry traces of gateway requests, exported to the SDK's in-memory exporter.

The gateway runs in this process (uvicorn on a thread, the real ASGI application)
so that its spans reach the exporter; the provider is the simulated upstream,
whose ``echo_header`` directive answers with the ``traceparent`` it received.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.cache.models import CachePolicy
from apps.gateway import tracing
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.live

ECHO = [{"role": "user", "content": "[[sim:echo_header=traceparent]]"}]


@pytest.fixture
def traced_gateway(tenant: Tenant) -> Iterator[tuple[str, InMemorySpanExporter]]:
    """The real ASGI application on a thread of this process, tracing into an in-memory exporter."""
    from costcontrol.asgi import application, gateway

    CachePolicy.objects.create(project=tenant.project)
    budget_create(
        organization=tenant.org, name="cap", scope=BudgetScope.PROJECT, project=tenant.project, amount_usd=Decimal(5)
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    port = live.free_port()
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="on", log_level="warning", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        live.wait_until(lambda: server.started, timeout=30)
        url = f"http://127.0.0.1:{port}/v1"
        wait_key_live(url, tenant.key.plaintext)
        yield url, exporter
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        gateway.runtime = None  # the next start-up (another test) opens its own
        tracing.use(None)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_request_span_with_genai_attributes_and_child_spans(
    tenant: Tenant, traced_gateway: tuple[str, InMemorySpanExporter]
) -> None:
    url, exporter = traced_gateway
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    app_traceparent = f"00-{trace_id}-{parent_id}-01"
    completion = sdk(url, tenant.key.plaintext).chat.completions.create(
        model="gpt-4o-mini", messages=ECHO, extra_headers={"traceparent": app_traceparent}
    )
    # The attempt's CLIENT span shares the name and ends first; the request's span ends when it is recorded,
    # which runs beside the send (record.while_sending), so the app may have its answer a moment before.
    live.wait_until(
        lambda: [s for s in _by_name(exporter.get_finished_spans(), "chat gpt-4o-mini") if s.kind == SpanKind.SERVER],
        timeout=5,
    )
    spans = exporter.get_finished_spans()
    [request] = [span for span in _by_name(spans, "chat gpt-4o-mini") if span.kind == SpanKind.SERVER]
    # A child of the app's span, in the app's trace.
    assert f"{request.context.trace_id:032x}" == trace_id
    assert request.parent is not None and f"{request.parent.span_id:016x}" == parent_id
    attributes = request.attributes or {}
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens  # type: ignore[union-attr]
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert float(attributes["costcontrol.cost_usd"]) > 0  # type: ignore[arg-type]
    assert attributes["costcontrol.project"] == tenant.project.slug
    assert attributes["http.response.status_code"] == 200

    children = [span for span in spans if span.parent is not None and span.parent.span_id == request.context.span_id]
    names = sorted(span.name for span in children)
    assert names == ["admission", "cache lookup", "chat gpt-4o-mini"]
    [attempt] = [span for span in children if span.kind == SpanKind.CLIENT]
    assert (attempt.attributes or {})["http.response.status_code"] == 200
    assert (attempt.attributes or {})["gen_ai.provider.name"] == "sim"
    # The provider got the attempt's own traceparent (the simulator answered with what it received).
    assert completion.choices[0].message.content == f"00-{trace_id}-{attempt.context.span_id:016x}-01"


def test_failed_attempts_and_refusals_are_error_spans(
    tenant: Tenant, traced_gateway: tuple[str, InMemorySpanExporter]
) -> None:
    url, exporter = traced_gateway
    client = sdk(url, tenant.key.plaintext)
    with pytest.raises(Exception):  # noqa: B017 (the SDK's InternalServerError; the spans are the point)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "[[sim:500]]"}])
    live.wait_until(lambda: any(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans()), timeout=5)
    spans = exporter.get_finished_spans()
    [request] = [span for span in spans if span.kind == SpanKind.SERVER]
    assert request.status.status_code == StatusCode.ERROR
    assert (request.attributes or {})["http.response.status_code"] == 500
    attempts = [span for span in spans if span.kind == SpanKind.CLIENT]
    assert attempts and all(span.status.status_code == StatusCode.ERROR for span in attempts)
    assert all(span.context.trace_id == request.context.trace_id for span in spans)


def test_tracing_off_passes_the_apps_traceparent_upstream_unchanged(gateway: str, tenant: Tenant) -> None:
    """The session's gateway has no OTLP endpoint: no spans, but the app's trace context still reaches the provider."""
    wait_key_live(gateway, tenant.key.plaintext)
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    completion = sdk(gateway, tenant.key.plaintext).chat.completions.create(
        model="gpt-4o-mini", messages=ECHO, extra_headers={"traceparent": traceparent}
    )
    assert completion.choices[0].message.content == traceparent
    # Without one, or with a malformed one, none is made up or passed on.
    for junk in ({}, {"traceparent": "00-zz-yy-01"}, {"traceparent": traceparent.upper()}, {"traceparent": "x" * 55}):
        completion = sdk(gateway, tenant.key.plaintext).chat.completions.create(
            model="gpt-4o-mini", messages=ECHO, extra_headers=junk
        )
        assert completion.choices[0].message.content == "none"


def test_a_garbage_traceparent_starts_a_new_trace(
    tenant: Tenant, traced_gateway: tuple[str, InMemorySpanExporter]
) -> None:
    url, exporter = traced_gateway
    for junk in ("00-zz-yy-01", "x" * 300, "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        sdk(url, tenant.key.plaintext).chat.completions.create(
            model="gpt-4o-mini", messages=ECHO, extra_headers={"traceparent": junk}
        )
    deadline = time.monotonic() + 5
    while len([s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    requests = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert all(span.parent is None and span.context.trace_id != 0 for span in requests)


def test_a_responses_request_has_the_same_cache_and_admission_child_spans(
    tenant: Tenant, traced_gateway: tuple[str, InMemorySpanExporter]
) -> None:
    url, exporter = traced_gateway
    response = sdk(url, tenant.key.plaintext).responses.create(model="gpt-4o-mini", input="hello", store=False)
    assert response.output_text

    def request_span() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]

    live.wait_until(request_span, timeout=5)
    [request] = request_span()
    children = [
        span.name
        for span in exporter.get_finished_spans()
        if span.parent is not None and span.parent.span_id == request.context.span_id
    ]
    assert {"admission", "cache lookup"} <= set(children) and len(children) == 3  # and the one attempt
