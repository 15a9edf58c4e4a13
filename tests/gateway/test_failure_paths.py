"""Every failure path is accounted for: hangs end, buffers stay bounded, what a provider may bill is recorded."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import urlsplit

import openai
import pytest

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.ledger.models import LedgerEntry
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy
from tests.gateway.test_redis_failure import RedisServer
from tests.routing.helpers import ask

pytestmark = pytest.mark.live


def _rss_kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115 (procfs, read once)
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture
def small_gateway(tenant: Tenant) -> Iterator[tuple[live.Process, str]]:
    """A gateway with small bounds on SSE events and non-streamed answers."""
    process, url = live.start_gateway(
        GATEWAY_MAX_SSE_EVENT_BYTES="65536", GATEWAY_MAX_UPSTREAM_BODY_BYTES="1000000", GATEWAY_RETRIES="0"
    )
    wait_key_live(url, tenant.key.plaintext)
    yield process, url
    process.stop()


def test_a_redis_that_stops_answering_gives_503_not_a_hang(tenant: Tenant) -> None:
    budget_create(
        organization=tenant.org, name="cap", scope=BudgetScope.PROJECT, project=tenant.project, amount_usd=Decimal(10)
    )
    redis_server = RedisServer()
    redis_server.start()
    assert redis_server.proc is not None
    process, url = live.start_gateway(REDIS_URL=redis_server.url, GATEWAY_REDIS_TIMEOUT_SECONDS="0.5")
    try:
        client = sdk(url, tenant.key.plaintext)  # its snapshot, built at start, has the budget
        assert client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi")).choices
        # Paused, not gone: connections stay open and the kernel accepts what is written; nothing answers.
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)  # past the lease the first request took (0.2 s)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi again"))
        assert exc.value.status_code == 503 and exc.value.code == "limits_unavailable"
        assert time.monotonic() - started < 10
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        process.stop()
        redis_server.kill()


def test_a_redis_that_stops_answering_does_not_hang_a_failing_upstream_call_on_its_breaker(tenant: Tenant) -> None:
    """Fail-open limits serve without Redis; the breaker then skips its count instead of failing the request."""
    redis_server = RedisServer()
    redis_server.start()
    assert redis_server.proc is not None
    process, url = live.start_gateway(
        REDIS_URL=redis_server.url, GATEWAY_REDIS_TIMEOUT_SECONDS="0.5", GATEWAY_LIMITS_FAIL_OPEN="1",
        GATEWAY_RETRIES="0",
    )  # fmt: skip
    try:
        client = sdk(url, tenant.key.plaintext)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi")).choices
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("[[sim:500]]"))
        # The provider's own 500 is relayed; the breaker's Redis error is not turned into ours.
        assert exc.value.status_code == 500 and "(simulated)" in exc.value.message
        assert time.monotonic() - started < 10
        # The process still serves: the next good request is answered (fail-open) in bounded time.
        started = time.monotonic()
        assert client.chat.completions.create(model="gpt-4o-mini", messages=ask("after")).choices
        assert time.monotonic() - started < 10
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        process.stop()
        redis_server.kill()


def test_an_unframed_stream_is_cut_off_with_memory_flat(
    small_gateway: tuple[live.Process, str], tenant: Tenant
) -> None:
    process, url = small_gateway
    client = sdk(url, tenant.key.plaintext)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=ask("warm up")).choices
    before = _rss_kb(process.proc.pid, "VmRSS")
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=ask("[[sim:unframed=67108864]]"), stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        body = b"".join(response.iter_bytes())
    assert b"upstream_stream_truncated" in body and len(body) < 10_000
    peak = _rss_kb(process.proc.pid, "VmHWM")
    assert peak - before < 32 * 1024, f"the gateway grew by {peak - before} KiB on a 64 MiB unframed stream"
    row = ledger_row(request_id)
    assert (row.status_code, row.error_code) == (502, "upstream_stream_truncated")
    assert row.usage_estimated and row.cost > 0


def test_a_huge_answer_is_refused_and_recorded_as_possibly_billed(
    small_gateway: tuple[live.Process, str], tenant: Tenant
) -> None:
    _process, url = small_gateway
    client = sdk(url, tenant.key.plaintext)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("[[sim:huge=4000000]]"), max_tokens=50)
    assert exc.value.status_code == 502 and exc.value.code == "upstream_response_too_large"
    request_id = exc.value.response.headers["x-request-id"]
    assert ledger_row(request_id).status_code == 502
    attempt = ledger_row(request_id + "-t1")
    assert attempt.possibly_billed and attempt.usage_estimated and attempt.completion_tokens == 50
    assert attempt.cost > 0


def test_a_timed_out_attempt_is_recorded_as_possibly_billed(gateway: str, tenant: Tenant) -> None:
    tenant.provider.first_byte_timeout_seconds = 0.5
    tenant.provider.save()
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("slow [[sim:timeout]]"), max_tokens=100)
    assert exc.value.status_code == 504
    request_id = exc.value.response.headers["x-request-id"]
    main = ledger_row(request_id)
    attempt = ledger_row(request_id + "-t1")
    assert main.status_code == 504 and main.cost == 0 and not main.possibly_billed
    assert attempt.possibly_billed and attempt.usage_estimated and attempt.status_code == 504
    # The provider may have finished the answer we stopped waiting for: priced at the request's worst case.
    assert attempt.completion_tokens == 100 and attempt.cost > 0 and attempt.served_model == "gpt-4o-mini"


def test_the_providers_total_timeout_ends_a_whole_answer_before_its_read_timeout(gateway: str, tenant: Tenant) -> None:
    """The total timeout rides on the upstream client's read timer: it must still end the wait on its own."""
    tenant.provider.first_byte_timeout_seconds = 20
    tenant.provider.total_timeout_seconds = 0.5
    tenant.provider.save()
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("slow [[sim:timeout]]"), max_tokens=100)
    assert exc.value.status_code == 504 and exc.value.code == "upstream_timeout"
    assert time.monotonic() - started < 10  # the provider's 0.5 s per attempt, with retries, not its 20 s
    attempt = ledger_row(exc.value.response.headers["x-request-id"] + "-t1")
    assert attempt.possibly_billed and attempt.status_code == 504


def test_a_client_that_leaves_before_the_usage_chunk_is_billed_by_estimate(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    body = {"model": "gpt-4o-mini", "stream": True, "messages": ask("Tell me a long story [[sim:drip=30]]")}
    parts = urlsplit(gateway)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=15)
    connection.request(
        "POST", parts.path + "/chat/completions", body=json.dumps(body),
        headers={"Authorization": f"Bearer {tenant.key.plaintext}", "Content-Type": "application/json"},
    )  # fmt: skip
    response = connection.getresponse()
    request_id = response.getheader("x-request-id")
    assert response.status == 200 and response.read(8)  # the first bytes, then hang up before the usage chunk
    connection.close()
    row = live.wait_until(lambda: _row(request_id), timeout=15, interval=0.2)
    assert (row.status_code, row.error_code) == (499, "client_disconnected")
    assert row.usage_estimated and row.cost > 0 and row.prompt_tokens > 0


def _row(request_id: str) -> LedgerEntry | None:
    try:
        return ledger_row(request_id)
    except AssertionError:
        return None
