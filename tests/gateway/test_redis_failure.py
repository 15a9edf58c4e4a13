"""Redis goes away: fail closed (503) by default, or fail open and lose no ledger row."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
import redis

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.ledger.models import LedgerEntry
from apps.ledger.services import ledger_ingest_batch
from costcontrol.embedded import redis_server_binary
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import sdk

pytestmark = pytest.mark.live

HELLO = [{"role": "user", "content": "hello"}]


class RedisServer:
    """A throw-away redis-server of our own, so the test can kill it."""

    def __init__(self) -> None:
        self.port = live.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        live.wait_until(lambda: self._ping(), timeout=10)

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


def test_fail_closed_and_fail_open(tenant: Tenant, own_redis: RedisServer, upstream: str) -> None:
    budget_create(
        organization=tenant.org, name="cap", scope=BudgetScope.PROJECT, project=tenant.project, amount_usd=Decimal(10)
    )
    closed_proc, closed_url = live.start_gateway(REDIS_URL=own_redis.url)
    open_proc, open_url = live.start_gateway(REDIS_URL=own_redis.url, GATEWAY_LIMITS_FAIL_OPEN="1")
    try:
        closed, opened = sdk(closed_url, tenant.key.plaintext), sdk(open_url, tenant.key.plaintext)
        assert closed.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices

        own_redis.kill()
        with pytest.raises(openai.InternalServerError) as exc:
            closed.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert exc.value.status_code == 503 and exc.value.code == "limits_unavailable"

        raw = opened.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
        assert raw.parse().choices, "fail-open serves the request without Redis"
        request_id = raw.headers["x-request-id"]

        # Redis returns (empty: it kept nothing); the spooled ledger event is re-sent to it.
        own_redis.start()
        client = redis.Redis.from_url(own_redis.url)

        def ingested() -> bool:
            ledger_ingest_batch(client=client, consumer="t", block_ms=0)
            return LedgerEntry.objects.filter(request_id=request_id).exists()

        live.wait_until(ingested, timeout=15, interval=0.2)
        row = LedgerEntry.objects.get(request_id=request_id)
        assert row.status_code == 200 and "limits-unchecked" in row.route and row.cost > 0
    finally:
        closed_proc.stop()
        open_proc.stop()
