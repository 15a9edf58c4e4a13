"""Fault drills on a real Redis Cluster with replicas (three primaries, one replica each, started here).

- A primary is SIGKILLed under a gateway's traffic: its replica takes over, the gateway finds the new
  primary on its own (no restart), and every request the app sent has its ledger row, the ones refused
  while the cluster had no primary for the slot included (written to the spool, re-sent afterwards).
- A slot in mid-migration: the fast client follows ``ASK`` to the importing node.

Skipped only when ``redis-server`` cannot start a cluster here, with a warning that says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.db.models import Sum
from redis.cluster import RedisCluster

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create, rate_limit_set
from apps.core import names
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.enforcement.fastredis import SHORT_WAIT_BACKOFF_SECONDS
from apps.enforcement.redis_clients import cluster_seeds, fast_client, node_url, sync_client
from apps.ledger.models import LedgerEntry
from apps.ledger.services import ledger_ingest_batch
from costcontrol.cluster_cache import RedisClusterCache
from tests import live
from tests.enforcement.test_redis_cluster import (
    _free_pair,
    _skip_loudly,
    _wait_for_cluster_ok,
    _wait_for_pings,
    _wait_for_policy,
)
from tests.factories import Tenant
from tests.gateway.helpers import sdk

pytestmark = pytest.mark.live

NODE_TIMEOUT_MS = 1000  # how long a silent primary takes to be declared failed; its replica then takes over


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[int, subprocess.Popen[bytes]]]]:
    """``redis+cluster://`` URL of three primaries with a replica each, and the servers by port."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _skip_loudly("redis-server or redis-cli is not installed")
    assert server is not None and cli is not None
    ports = [_free_pair() for _ in range(6)]
    processes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in ports:
            args = [
                server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(tmp_path / f"nodes-{port}.conf"), "--dir", str(tmp_path),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
                # A replica (re)joining syncs at once instead of after Redis's default 5 s wait for others.
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_for_pings(ports, list(processes.values()))
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            _skip_loudly(f"redis-cli --cluster create failed: {create.stdout[-500:]} {create.stderr[-500:]}")
        _wait_for_cluster_ok(ports)
        _wait_for_replicas(ports[0], 3)
        # Every node named as a seed: a process that starts (or re-reads the map) while one is down finds another.
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports), processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            process.wait(timeout=10)


def _wait_for_replicas(port: int, wanted: int) -> None:
    """Until every primary has a replica that has synced with it (a replica that never synced cannot take over)."""
    deadline = time.monotonic() + 20
    while True:
        nodes = redis.Redis(port=port).cluster("nodes")
        replicas = [int(address.rpartition(":")[2]) for address, n in nodes.items() if "slave" in n["flags"]]
        synced = [p for p in replicas if redis.Redis(port=p).info("replication").get("master_link_status") == "up"]
        if len(synced) >= wanted:
            return
        if time.monotonic() > deadline:
            _skip_loudly(f"the replicas did not attach: {nodes}")
        time.sleep(0.1)


def _ask(client: openai.OpenAI, i: int) -> str:
    """One chat request; what the app saw: ``ok``, or the HTTP status of an error."""
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": f"Say hi, #{i}."}]
        )
        return "ok"
    except openai.APIStatusError as exc:
        return str(exc.status_code)


def test_a_primary_fails_over_under_traffic_and_no_ledger_row_is_lost(
    replicated_cluster: tuple[str, dict[int, subprocess.Popen[bytes]]], tenant: Tenant, settings: Any
) -> None:
    url, servers = replicated_cluster
    admin = RedisCluster.from_url(node_url(url))
    owner = admin.get_node_from_key(names.org_tag(tenant.org.id))
    # A key prefix that puts the ledger stream on the organisation's primary too: the drill then takes away
    # both the admission's keys and the stream the request's ledger row is written to.
    prefix = next(
        f"cc-drill-{n}:" for n in range(10_000)
        if admin.get_node_from_key(names.ledger_stream(f"cc-drill-{n}:")).name == owner.name
    )  # fmt: skip
    process, gateway = live.start_gateway(
        REDIS_URL=url, CELERY_BROKER_URL=settings.REDIS_URL, COSTCONTROL_REDIS_PREFIX=prefix
    )
    try:
        settings.REDIS_URL, settings.REDIS_PREFIX = url, prefix
        # A budget and limits never reached: every admission runs on the organisation's slot.
        budget_create(organization=tenant.org, name="roomy", scope=BudgetScope.PROJECT, project=tenant.project,
                      amount_usd=Decimal("100"))  # fmt: skip
        rate_limit_set(project=tenant.project, requests_per_minute=100_000, max_concurrent=1_000)
        _wait_for_policy(url, [gateway], tenant.key.plaintext)
        client = sdk(gateway, tenant.key.plaintext)  # no retries: each outcome is what one request got
        outcomes = [_ask(client, i) for i in range(10)]
        assert outcomes == ["ok"] * 10

        # Let the replica catch up first. Redis replicates asynchronously: what a primary acknowledged but
        # had not yet sent on dies with it unless the gateway WAITs for its replica (REDIS_WAIT_REPLICAS, off
        # here as by default; the drill below turns it on and skips this). This drill tests what the product
        # promises either way: finding the new primary, failing closed meanwhile, spooling what was refused.
        time.sleep(0.2)  # the last request's record (settle, XADD) runs just after its answer is sent
        node = redis.Redis(port=owner.port)
        # WAIT counts this connection's writes: one write in the organisation's slot, replicated, means every
        # write before it on that primary is (one replication stream, in order).
        node.set(f"{settings.REDIS_PREFIX}{names.org_tag(tenant.org.id)}:drill", 1)
        assert node.execute_command("WAIT", 1, 2000) == 1
        servers[owner.port].kill()  # SIGKILL: no goodbye to the cluster or the gateway
        killed = time.monotonic()
        admin.close()

        # Keep asking until ten answers in a row are ok again (the replica took over), for at most 30 s.
        deadline, streak, i = time.monotonic() + 30, 0, 10
        while streak < 10 and time.monotonic() < deadline:
            outcome = _ask(client, i)
            outcomes.append(outcome)
            streak = streak + 1 if outcome == "ok" else 0
            i += 1
            time.sleep(0.05)
        alive = next(port for port, server in servers.items() if server.poll() is None)
        nodes = redis.Redis(port=alive).execute_command("CLUSTER", "NODES")
        assert streak == 10, f"the gateway did not recover after the failover: {outcomes[-20:]}; cluster: {nodes}"
        print(f"failover: {outcomes.count('503')} requests refused (503) over {time.monotonic() - killed:.1f} s")
        # While the slot had no primary the gateway failed closed (503, nothing sent upstream), never a 500.
        assert set(outcomes) <= {"ok", "503"}, outcomes
        assert "503" in outcomes, "the organisation's primary was down: its admissions cannot have run"

        # Every request has its row: the spool is re-sent every 2 s once the stream's primary answers again.
        # A client made now finds the cluster although one of the nodes the URL names is dead.
        state = sync_client(url)

        def all_rows() -> bool:
            while ledger_ingest_batch(client=state, consumer="tests", block_ms=0):
                pass
            return LedgerEntry.objects.filter(project=tenant.project).count() >= len(outcomes)

        live.wait_until(all_rows, timeout=20, interval=0.5)
        state.close()
    finally:
        process.stop()
    rows = LedgerEntry.objects.filter(project=tenant.project)
    assert rows.count() == len(outcomes)
    assert rows.filter(status_code=200).count() == outcomes.count("ok")
    assert rows.filter(status_code=503, error_code="limits_unavailable").count() == outcomes.count("503")


KILLS = 3  # the organisation's primary is killed, restarted as a replica, and its successor killed in turn


def _primary_port(servers: dict[int, subprocess.Popen[bytes]], slot: int) -> int | None:
    """The port of the primary that serves ``slot`` as a live node sees it, or None while none does."""
    for port, server in servers.items():
        if server.poll() is not None:
            continue
        try:
            slots = redis.Redis(port=port, socket_timeout=1).execute_command("CLUSTER", "SLOTS")
        except redis.RedisError:
            continue
        for start, end, primary, *_replicas in slots:
            if int(start) <= slot <= int(end):
                alive = servers[int(primary[1])].poll() is None
                return int(primary[1]) if alive else None
    return None


def _answered_ok(answers: list[tuple[str, str]], *, since: int, count: int) -> bool:
    """Whether ``count`` requests were answered ok after the first ``since``."""
    return [outcome for outcome, _id in answers[since:]].count("ok") >= count


def _short_waits(metrics_page: str, token: str) -> float:
    """The gateway's count of durable writes that fewer replicas than asked acknowledged (or that skipped
    WAIT after such a one)."""
    request = urllib.request.Request(metrics_page, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        page = response.read().decode()
    return sum(float(line.split()[-1]) for line in page.splitlines() if line.startswith("costcontrol_redis_wait_short"))


def _wait_until_replicas_acknowledge(metrics_page: str, token: str) -> None:
    """Until the gateway's WAITs are answered in time again (its short count still for longer than the
    second it goes without WAIT after a short one): a write it makes now is on the replica when answered."""
    deadline, last, still_since = time.monotonic() + 20, -1.0, time.monotonic()
    while time.monotonic() < deadline:
        count = _short_waits(metrics_page, token)
        if count != last:
            last, still_since = count, time.monotonic()
        elif time.monotonic() - still_since > SHORT_WAIT_BACKOFF_SECONDS + 0.5:
            return
        time.sleep(0.1)
    raise AssertionError("the gateway's WAITs kept coming back short")


def _wait_for_sync(port: int) -> None:
    """Until the (restarted) node at ``port`` is a replica that has synced with its primary."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            info = redis.Redis(port=port, socket_timeout=1).info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the restarted node on port {port} did not sync as a replica")


def test_with_wait_on_no_ledger_row_or_budget_increment_is_lost_across_several_kills(
    replicated_cluster: tuple[str, dict[int, subprocess.Popen[bytes]]], tenant: Tenant, settings: Any
) -> None:
    """REDIS_WAIT_REPLICAS=1, and no catch-up before the kills: the primary is SIGKILLed under concurrent
    traffic, with whatever it acknowledged last. Every request still has its ledger row and the budget
    counter holds at least what the ledger says was spent (an increment lost with the primary would
    leave it short).

    What it does not show is loss without WAIT: on loopback a SIGKILLed primary loses only what it had not
    yet written to its replica's socket, and with REDIS_WAIT_REPLICAS=0 this drill lost nothing in 3 runs.
    An earlier form that killed 0.3 s after the replica re-synced (before it acknowledged anything) lost
    answered requests' rows without WAIT in 2 runs of 4, and with WAIT lost the writes it had counted short
    there, as the README says it may."""
    url, servers = replicated_cluster
    admin = RedisCluster.from_url(node_url(url))
    slot = admin.keyslot(names.org_tag(tenant.org.id))
    owner = admin.get_node_from_key(names.org_tag(tenant.org.id))
    prefix = next(
        f"cc-wait-{n}:" for n in range(10_000)
        if admin.get_node_from_key(names.ledger_stream(f"cc-wait-{n}:")).name == owner.name
    )  # fmt: skip
    admin.close()
    token = secrets.token_urlsafe(16)
    process, gateway = live.start_gateway(
        REDIS_URL=url, CELERY_BROKER_URL=settings.REDIS_URL, COSTCONTROL_REDIS_PREFIX=prefix, METRICS_TOKEN=token,
        # Long enough that a replica on this shared two-core box answers within it when it is up.
        REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="200",
    )  # fmt: skip
    metrics_page = gateway.removesuffix("/v1") + "/metrics"
    answers: list[tuple[str, str]] = []  # what each request got (ok, or its status), and its request id
    recovered: list[float] = []
    stop = threading.Event()
    try:
        settings.REDIS_URL, settings.REDIS_PREFIX = url, prefix
        budget = budget_create(organization=tenant.org, name="roomy", scope=BudgetScope.PROJECT,
                               project=tenant.project, amount_usd=Decimal("100"))  # fmt: skip
        rate_limit_set(project=tenant.project, requests_per_minute=100_000, max_concurrent=1_000)
        _wait_for_policy(url, [gateway], tenant.key.plaintext)
        client = sdk(gateway, tenant.key.plaintext)

        def traffic(worker: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": f"Hi {worker}/{i}"}]
                    )
                    answers.append(("ok", raw.headers["x-request-id"]))
                except openai.APIStatusError as exc:
                    answers.append((str(exc.status_code), exc.response.headers.get("x-request-id", "")))
                except openai.APIError as exc:  # no answer at all: the assertions below name it
                    answers.append((type(exc).__name__, ""))
                i += 1
                time.sleep(0.01)  # four apps at ~100 requests/s each, not a flood of instant 503s

        workers = [threading.Thread(target=traffic, args=(w,), daemon=True) for w in range(4)]
        for worker in workers:
            worker.start()
        for _kill in range(KILLS):
            # Not a catch-up write: the gateway's own WAITs must be answered (a replica that is up and in
            # sync). What it wrote while they were not, it counted short and did not promise to keep.
            _wait_until_replicas_acknowledge(metrics_page, token)
            port = _primary_port(servers, slot)
            assert port is not None
            args = servers[port].args
            servers[port].kill()  # SIGKILL, no catch-up first
            killed = time.monotonic()
            servers[port].wait()
            live.wait_until(lambda: _primary_port(servers, slot), timeout=20, interval=0.05)
            live.wait_until(functools.partial(_answered_ok, answers, since=len(answers), count=10), timeout=20)
            # Back as a replica of its successor, and synced, before that one is killed in turn.
            servers[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            _wait_for_sync(port)
            recovered.append(time.monotonic() - killed)
        time.sleep(0.3)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        outcomes = [outcome for outcome, _id in answers]
        print(f"{KILLS} kills, {', '.join(f'{s:.1f}' for s in recovered)} s each from kill to a synced replica: "
              f"{len(outcomes)} requests, {outcomes.count('503')} refused (503)")  # fmt: skip
        assert set(outcomes) <= {"ok", "503"}, sorted(set(outcomes))

        state = sync_client(url)

        def all_rows() -> bool:
            while ledger_ingest_batch(client=state, consumer="tests", block_ms=0):
                pass
            return LedgerEntry.objects.filter(project=tenant.project).count() >= len(outcomes)

        try:
            live.wait_until(all_rows, timeout=20, interval=0.5)
        except AssertionError:
            have = set(LedgerEntry.objects.filter(project=tenant.project).values_list("request_id", flat=True))
            missing = [(rid, outcome) for outcome, rid in answers if rid not in have]
            raise AssertionError(f"ledger rows lost (request id, answer): {missing}; log {process.log}") from None
    finally:
        stop.set()
        process.stop()  # gives its leases back: the counter then holds spend (and anything lost from returns)
    rows = LedgerEntry.objects.filter(project=tenant.project)
    assert rows.count() == len(outcomes)
    assert rows.filter(status_code=200).count() == outcomes.count("ok")
    spent = to_nano(rows.aggregate(total=Sum("cost"))["total"] or Decimal(0))
    start, _end = period_bounds(budget.period, budget.timezone, dt.datetime.now(dt.UTC), None)
    counter = names.budget_counter(prefix, budget.id, start.timestamp(), organization_id=tenant.org.id)
    counted = int(state.get(counter) or 0)
    state.close()
    assert spent > 0
    # A lost lease return or settle errs upward (the reservation stays); a lost reservation would be below.
    assert counted >= spent, f"the budget counter lost {spent - counted} nano-dollars in the failovers"


def test_the_fast_client_follows_ask_while_a_slot_is_migrating(
    replicated_cluster: tuple[str, dict[int, subprocess.Popen[bytes]]],
) -> None:
    url, _servers = replicated_cluster
    key = f"{settings.REDIS_PREFIX}migrating:1"
    admin = RedisCluster.from_url(node_url(url))
    admin.set(key, "before")
    slot = admin.keyslot(key)
    source = admin.get_node_from_key(key)
    target = next(node for node in admin.get_primaries() if node.name != source.name)
    source_client, target_client = admin.get_redis_connection(source), admin.get_redis_connection(target)
    source_id = source_client.execute_command("CLUSTER", "MYID")
    target_id = target_client.execute_command("CLUSTER", "MYID")
    target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    # The key moves; the slot stays the source's until the migration ends, so the source answers ASK.
    source_client.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", key)

    async def read_and_write() -> tuple[object, object, object]:
        client = fast_client(url, command_timeout=2)
        try:
            before = await client.execute("GET", key)
            written = await client.execute("SET", key, "during")
            return before, written, await client.execute("GET", key)
        finally:
            await client.close()

    try:
        before, written, during = asyncio.run(read_and_write())
        assert (before, written, during) == (b"before", b"OK", b"during")
        asking = target_client.pipeline(transaction=False)
        asking.execute_command("ASKING")
        asking.get(key)
        assert asking.execute()[1] == b"during", "written on the importing node, after ASKING"
    finally:
        for client in (source_client, target_client):
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        admin.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://host",
        "redis+cluster://h:1,",
        "redis+cluster://h:99999",
        "redis+cluster://:7000",
        "redis+cluster://h:1,h:x",
    ],
)
def test_a_cluster_url_that_names_no_address_is_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match="names nodes as host:port"):
        fast_client(url)
    with pytest.raises(ValueError, match="names nodes as host:port"):
        sync_client(url)


def test_several_seeds_with_credentials_reach_every_client() -> None:
    url = "redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001"
    assert cluster_seeds(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert node_url(url) == "redis://user:secret@10.0.0.1:7000"


def test_djangos_cache_takes_a_url_with_several_seeds_whole(
    replicated_cluster: tuple[str, dict[int, subprocess.Popen[bytes]]],
) -> None:
    """Django splits a string LOCATION at its commas; the cluster cache keeps the seeds together."""
    url, _servers = replicated_cluster
    assert url.count(",") == 5
    cache = RedisClusterCache(url, {"KEY_PREFIX": settings.REDIS_PREFIX + "django"})
    assert cache.add("seeds-whole", 1, 30) and cache.incr("seeds-whole") == 2
    cache.delete("seeds-whole")
