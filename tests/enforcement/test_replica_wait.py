"""The opt-in WAIT for replicas (``REDIS_WAIT_REPLICAS``), against a real primary and replica started here.

A durable batch (an admission, a settle, a ledger event) is answered only once the replica holds it; the
batches of one event-loop turn share one WAIT; a replica that is gone costs the timeout and is logged and
counted, and the write is still answered; settings that are not usable WAIT arguments are refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import runpy
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create, rate_limit_set
from apps.core import names
from apps.core.events import EVENT_FIELD
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.enforcement import fastredis
from apps.enforcement.fastcluster import FastRedisCluster
from apps.enforcement.fastredis import FastRedis, ReplicaWait
from apps.enforcement.limiter import Limiter
from apps.gateway.ledger_writer import LedgerWriter
from apps.ledger.models import LedgerEntry
from apps.ledger.services import ledger_ingest_batch
from costcontrol.env import MissingSetting
from tests import live
from tests.enforcement.test_limiter import _budget
from tests.enforcement.test_redis_cluster import _free_pair, _skip_loudly, _wait_for_policy
from tests.factories import Tenant
from tests.gateway.helpers import sdk

pytestmark = pytest.mark.live

T0 = 1_795_000_000.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A primary's port, and its replica's process (synced before the tests run)."""
    server = shutil.which("redis-server")
    if server is None:
        _skip_loudly("redis-server is not installed")
    assert server is not None
    folder: Path = tmp_path_factory.mktemp("redis-pair")
    primary_port, replica_port = _free_pair(), _free_pair()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    primary = subprocess.Popen([server, "--port", str(primary_port), *common], stdout=subprocess.DEVNULL)
    replica = subprocess.Popen(
        [server, "--port", str(replica_port), "--replicaof", "127.0.0.1", str(primary_port), *common],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=replica_port).info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                _skip_loudly("the replica did not sync with its primary")
            time.sleep(0.05)
        yield primary_port, replica
    finally:
        for process in (primary, replica):
            os.kill(process.pid, signal.SIGCONT)  # in case a test left it stopped
            process.terminate()
            process.wait(timeout=10)


def _waits(port: int) -> int:
    """How many WAIT commands the server at ``port`` has run."""
    return int(redis.Redis(port=port).info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def _replica_port(replica: subprocess.Popen[bytes]) -> int:
    args = replica.args
    assert isinstance(args, list)
    return int(args[args.index("--port") + 1])


def test_a_durable_batch_is_on_the_replica_when_it_is_answered(pair: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, replica = pair
    key = f"durable:{uuid.uuid4().hex}"

    async def scenario() -> tuple[list[Any], list[Any]]:
        client = FastRedis(f"redis://127.0.0.1:{port}/0", command_timeout=2, wait=ReplicaWait(1, 500))
        try:
            plain = await client.execute_many([("SET", key + ":plain", b"1")])
            before = _waits(port)
            durable = await client.pipeline().set(key, b"v").xadd(key + ":stream", {b"f": b"1"}).execute(durable=True)
            # Read on the replica before anything else runs: the WAIT is why it is there already.
            seen = redis.Redis(port=_replica_port(replica)).get(key)
            assert seen == b"v"
            assert _waits(port) == before + 1
            return plain, durable
        finally:
            await client.close()

    before = _waits(port)
    plain, durable = asyncio.run(scenario())
    assert plain == [b"OK"]
    assert durable[0] == b"OK" and isinstance(durable[1], bytes)  # the WAIT's reply is not among the replies
    assert _waits(port) == before + 1  # the plain batch sent none


def test_durable_batches_of_one_loop_turn_share_one_wait(pair: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, _replica = pair
    key = f"shared:{uuid.uuid4().hex}"

    async def scenario() -> list[list[Any]]:
        client = FastRedis(f"redis://127.0.0.1:{port}/0", command_timeout=2, wait=ReplicaWait(1, 500))
        try:
            await client.execute("PING")  # connected first: every batch below is queued in the same turn
            return await asyncio.gather(*(client.execute_many([("INCR", key)], durable=True) for _ in range(20)))
        finally:
            await client.close()

    before = _waits(port)
    replies = asyncio.run(scenario())
    assert sorted(reply for [reply] in replies) == list(range(1, 21))
    assert _waits(port) == before + 1


def test_a_missing_replica_costs_the_timeout_and_every_write_is_still_answered(
    pair: tuple[int, subprocess.Popen[bytes]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica is stopped (SIGSTOP): WAIT returns 0 after its timeout; admission, settle and ledger
    event all answer, the short WAITs are counted and logged, and nothing goes to the spool. The record's
    round trip, within a second of the short WAIT, sends none (and is counted short too)."""
    port, replica = pair
    prefix = f"wait:{uuid.uuid4().hex[:6]}:"
    short: list[int] = []

    async def scenario() -> tuple[float, list[bytes]]:
        client = FastRedis(
            f"redis://127.0.0.1:{port}/0", command_timeout=2, wait=ReplicaWait(1, 80, on_short=lambda: short.append(1)),
        )  # fmt: skip
        limiter = Limiter(client, prefix)
        writer = LedgerWriter(client, names.ledger_stream(prefix), tmp_path)
        try:
            await limiter.load()
            started = time.monotonic()
            admission = await limiter.admit(
                request_id="r1", budgets=[_budget("10")], rate_limits=[], worst_case_usd=Decimal("1"),
                worst_case_tokens=10, now=T0,
            )  # fmt: skip
            pipeline = client.pipeline()
            pipeline.commands += limiter.settle_commands(
                admission, actual_usd=Decimal("0.25"), actual_tokens=5, now=T0 + 1
            )
            await writer.write({"request_id": "r1"}, pipeline=pipeline)
            elapsed = time.monotonic() - started
            stream = await client.execute("XRANGE", names.ledger_stream(prefix), "-", "+")
            assert all(fields[0] == EVENT_FIELD for _id, fields in stream)
            return elapsed, [fields[1] for _id, fields in stream]
        finally:
            await client.close()

    waits = _waits(port)
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="apps.enforcement.fastredis"):
            elapsed, events = asyncio.run(scenario())
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert events == [b'{"request_id":"r1"}']
    assert not list(tmp_path.glob("ledger-spool-*")), "answered by the primary: not spooled"
    start, _end = period_bounds("monthly", "UTC", dt.datetime.fromtimestamp(T0, dt.UTC), None)
    counter = names.budget_counter(prefix, 1, start.timestamp(), organization_id=1)
    assert int(redis.Redis(port=port).get(counter) or 0) == to_nano(Decimal("0.25"))
    assert len(short) == 2  # the admission's and the record's (settle + event in one round trip)
    assert _waits(port) == waits + 1  # only the admission waited
    assert 0.08 <= elapsed < 1  # one timeout of 80 ms, nothing close to the 2 s command timeout
    assert "fewer than 1 replica(s) within 80 ms" in caplog.text


def test_after_a_short_wait_the_next_second_goes_without_then_waiting_resumes(
    pair: tuple[int, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that is gone would hold the shared connection for the timeout in every loop turn; after a
    short WAIT the client skips WAIT for a while (counted short), then waits again once the replica is back."""
    port, replica = pair
    monkeypatch.setattr(fastredis, "SHORT_WAIT_BACKOFF_SECONDS", 0.3)
    short: list[int] = []
    key = f"backoff:{uuid.uuid4().hex}"

    async def durable(client: FastRedis) -> float:
        started = time.monotonic()
        await client.execute_many([("INCR", key)], durable=True)
        return time.monotonic() - started

    async def scenario() -> list[float]:
        client = FastRedis(
            f"redis://127.0.0.1:{port}/0", command_timeout=2, wait=ReplicaWait(1, 100, on_short=lambda: short.append(1))
        )
        try:
            os.kill(replica.pid, signal.SIGSTOP)
            try:
                took = [await durable(client), await durable(client)]
            finally:
                os.kill(replica.pid, signal.SIGCONT)
            await asyncio.sleep(0.35)
            took.append(await durable(client))
            return took
        finally:
            await client.close()

    waits = _waits(port)
    first, skipped, resumed = asyncio.run(scenario())
    assert first >= 0.09 and skipped < 0.09  # the second did not wait out a timeout
    assert len(short) == 2  # the short WAIT and the batch that skipped one; the third was acknowledged
    assert _waits(port) == waits + 2
    assert resumed < 0.09
    assert redis.Redis(port=_replica_port(replica)).get(key) == b"3"


def test_a_gateway_waiting_for_a_stopped_replica_still_answers_and_records_every_request(
    pair: tuple[int, subprocess.Popen[bytes]], tenant: Tenant, settings: Any
) -> None:
    """Through the live gateway, with a budget and limits (admission, settle and ledger all durable): the
    replica is stopped, every request is answered 200 and has its ledger row, and the short WAITs show on
    the metrics page."""
    port, replica = pair
    url = f"redis://127.0.0.1:{port}/0"
    token = secrets.token_urlsafe(16)
    process, gateway = live.start_gateway(
        REDIS_URL=url, CELERY_BROKER_URL=settings.REDIS_URL, METRICS_TOKEN=token,
        REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="30",
    )  # fmt: skip
    try:
        settings.REDIS_URL = url  # the policy is announced where this gateway listens
        budget_create(organization=tenant.org, name="wait", scope=BudgetScope.PROJECT, project=tenant.project,
                      amount_usd=Decimal("100"))  # fmt: skip
        rate_limit_set(project=tenant.project, requests_per_minute=10_000, max_concurrent=100)
        _wait_for_policy(url, [gateway], tenant.key.plaintext)
        client = sdk(gateway, tenant.key.plaintext)
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            for i in range(20):
                client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": f"Hi #{i}"}]
                )
            elapsed = time.monotonic() - started
            page = urllib.request.Request(
                gateway.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(page, timeout=10) as response:  # noqa: S310 (loopback)
                metrics = response.read().decode()
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        state = redis.Redis.from_url(url)

        def all_rows() -> bool:
            while ledger_ingest_batch(client=state, consumer="tests", block_ms=0):
                pass
            return LedgerEntry.objects.filter(project=tenant.project).count() >= 20

        live.wait_until(all_rows, timeout=10, interval=0.2)
        state.close()
    finally:
        process.stop()
    assert LedgerEntry.objects.filter(project=tenant.project, status_code=200).count() == 20
    short = [line for line in metrics.splitlines() if line.startswith("costcontrol_redis_wait_short_total")]
    assert short and float(short[0].split()[-1]) >= 1, short
    assert elapsed < 5, "a missing replica costs a timeout now and then, not one per request"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS must be an integer from 0 to 16"),
        ({"REDIS_WAIT_REPLICAS": "17"}, "REDIS_WAIT_REPLICAS must be an integer from 0 to 16"),
        ({"REDIS_WAIT_REPLICAS": "1.5"}, "REDIS_WAIT_REPLICAS must be an integer"),
        ({"REDIS_WAIT_REPLICAS": "NaN"}, "REDIS_WAIT_REPLICAS must be an integer"),
        ({"REDIS_WAIT_REPLICAS": "1e3"}, "REDIS_WAIT_REPLICAS must be an integer"),
        ({"REDIS_WAIT_REPLICAS": "99999999999999999999"}, "REDIS_WAIT_REPLICAS must be an integer from 0 to 16"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS must be an integer from 1 to 10000"),
        ({"REDIS_WAIT_TIMEOUT_MS": "-50"}, "REDIS_WAIT_TIMEOUT_MS must be an integer from 1 to 10000"),
        ({"REDIS_WAIT_TIMEOUT_MS": "inf"}, "REDIS_WAIT_TIMEOUT_MS must be an integer"),
        ({"REDIS_WAIT_TIMEOUT_MS": "50ms"}, "REDIS_WAIT_TIMEOUT_MS must be an integer"),
        (
            {"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "1000", "GATEWAY_REDIS_TIMEOUT_SECONDS": "2"},
            r"REDIS_WAIT_TIMEOUT_MS \(1000\) must be under half of GATEWAY_REDIS_TIMEOUT_SECONDS \(2 s\)",
        ),
    ],
)
def test_garbage_wait_settings_stop_the_process_with_the_variable_named(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)  # no embedded Redis started for this read
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MissingSetting, match=message):
        runpy.run_path(str(Path(settings.BASE_DIR) / "costcontrol" / "settings" / "base.py"))


def test_the_defaults_send_no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    for name in ("REDIS_WAIT_REPLICAS", "REDIS_WAIT_TIMEOUT_MS"):
        monkeypatch.delenv(name, raising=False)
    values = runpy.run_path(str(Path(settings.BASE_DIR) / "costcontrol" / "settings" / "base.py"))
    assert (values["REDIS_WAIT_REPLICAS"], values["REDIS_WAIT_TIMEOUT_MS"]) == (0, 50)


@pytest.mark.parametrize(
    ("replicas", "timeout_ms", "message"),
    [
        (-1, 50, "REDIS_WAIT_REPLICAS"),
        (True, 50, "REDIS_WAIT_REPLICAS"),
        (1.0, 50, "REDIS_WAIT_REPLICAS"),
        ("1", 50, "REDIS_WAIT_REPLICAS"),
        (10**30, 50, "REDIS_WAIT_REPLICAS"),
        (1, 0, "REDIS_WAIT_TIMEOUT_MS"),
        (1, float("nan"), "REDIS_WAIT_TIMEOUT_MS"),
        (1, 10**30, "REDIS_WAIT_TIMEOUT_MS"),
    ],
)
def test_garbage_wait_arguments_are_refused(replicas: Any, timeout_ms: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReplicaWait(replicas, timeout_ms)


def test_a_wait_the_command_timeout_would_cut_short_is_refused_by_both_fast_clients() -> None:
    wait = ReplicaWait(1, 1000)
    with pytest.raises(ValueError, match="under half the Redis command timeout"):
        FastRedis("redis://127.0.0.1:1/0", command_timeout=2.0, wait=wait)
    with pytest.raises(ValueError, match="under half the Redis command timeout"):
        FastRedisCluster("redis+cluster://127.0.0.1:1", command_timeout=2.0, wait=wait)
