"""Against a real three-primary Redis Cluster that the test starts on loopback.

Two gateway processes keep their state in the cluster (``REDIS_URL=redis+cluster://…``) while 200
concurrent requests (the official async SDK) spend a hard budget: the ledger, ingested from the
cluster's stream, never shows more than the limit plus one request's worst case, and one
admission's keys live in one slot. The cluster client is also checked on its own: routing by slot,
following a slot that moved, and a clear error for a URL that names no cluster.

Skipped only when ``redis-server`` cannot start a cluster here, with a warning that says so.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import sys
import time
import warnings
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
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create, rate_limit_set
from apps.core import names
from apps.core.catalog import OPENAI_PRICES
from apps.enforcement.fastcluster import FastRedisCluster
from apps.enforcement.fastredis import ReplicaWait
from apps.enforcement.redis_clients import fast_client, node_url, sync_client
from apps.ledger.models import LedgerEntry
from apps.ledger.services import ledger_ingest_batch
from costcontrol.cluster_cache import RedisClusterCache
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import sdk

pytestmark = pytest.mark.live

MAX_TOKENS = 200
REQUESTS = 200


def _free_pair() -> int:
    """A loopback port whose cluster bus port (+10000) is free too."""
    for _attempt in range(200):
        port = random.randint(20000, 40000)  # noqa: S311 (a port, not a secret)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def _skip_loudly(reason: str) -> None:
    message = f"Redis Cluster test SKIPPED: {reason}"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+cluster://`` URL of three primaries started here (no replicas)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _skip_loudly("redis-server or redis-cli is not installed")
    assert server is not None and cli is not None
    folder: Path = tmp_path_factory.mktemp("redis-cluster")
    ports = [_free_pair() for _ in range(3)]
    processes = []
    try:
        for port in ports:
            args = [
                server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(folder / f"nodes-{port}.conf"), "--dir", str(folder),
                "--save", "", "--appendonly", "no",
            ]  # fmt: skip
            processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait_for_pings(ports, processes)
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            _skip_loudly(f"redis-cli --cluster create failed: {create.stdout[-500:]} {create.stderr[-500:]}")
        _wait_for_cluster_ok(ports)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def _wait_for_pings(ports: list[int], processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 10
    for port, process in zip(ports, processes, strict=True):
        while True:
            if process.poll() is not None:
                _skip_loudly(f"redis-server --cluster-enabled yes exited with {process.returncode}")
            try:
                redis.Redis(port=port, socket_connect_timeout=0.5).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    _skip_loudly(f"redis-server on port {port} did not answer")
                time.sleep(0.05)


def _wait_for_cluster_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + 15
    while True:
        states = [redis.Redis(port=port).cluster("info")["cluster_state"] for port in ports]
        if all(state == "ok" for state in states):
            return
        if time.monotonic() > deadline:
            _skip_loudly(f"the cluster did not reach state ok: {states}")
        time.sleep(0.1)


def test_the_fast_client_routes_by_slot_and_follows_a_moved_slot(cluster_url: str) -> None:
    keys = [f"{settings.REDIS_PREFIX}route:{i}" for i in range(60)]
    admin = RedisCluster.from_url(node_url(cluster_url))
    # The keys spread over all three primaries, so one batch goes to three nodes.
    assert len({admin.get_node_from_key(key).name for key in keys}) == 3

    async def scenario() -> tuple[list[object], list[object], object]:
        client = fast_client(cluster_url, command_timeout=2)
        assert isinstance(client, FastRedisCluster)
        written = await client.execute_many([("SET", key, str(i)) for i, key in enumerate(keys)])
        read = await client.execute_many([("GET", key) for key in keys])
        # Move one key's slot to another primary behind the client's back: its map is now wrong.
        moved_key = keys[0]
        slot = key_slot(moved_key.encode())
        source = admin.get_node_from_key(moved_key)
        target = next(node for node in admin.get_primaries() if node.name != source.name)
        _migrate_slot(admin, slot, source, target)
        after_move = await client.execute("GET", moved_key)
        await client.close()
        return written, read, after_move

    written, read, after_move = asyncio.run(scenario())
    assert written == [b"OK"] * len(keys)
    assert read == [str(i).encode() for i in range(len(keys))]
    assert after_move == b"0"  # answered by the slot's new node after a MOVED


def _migrate_slot(admin: RedisCluster, slot: int, source: object, target: object) -> None:
    source_client = admin.get_redis_connection(source)  # type: ignore[arg-type]
    target_client = admin.get_redis_connection(target)  # type: ignore[arg-type]
    source_id = source_client.execute_command("CLUSTER", "MYID")
    target_id = target_client.execute_command("CLUSTER", "MYID")
    target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := source_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        host, port = target.host, target.port  # type: ignore[attr-defined]
        source_client.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
    for client in (source_client, target_client):
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def test_djangos_cache_counts_in_the_cluster_for_every_process(cluster_url: str) -> None:
    """The API throttles' counters (``cache.add`` then ``cache.incr``) are shared, not per process."""
    params = {"KEY_PREFIX": settings.REDIS_PREFIX + "django"}
    first, second = RedisClusterCache(cluster_url, params), RedisClusterCache(cluster_url, params)
    key = "api-token-guesses:203.0.113.9:1"
    assert first.add(key, 1, 61)
    assert not second.add(key, 1, 61)  # already counted by the other "process"
    assert second.incr(key) == 2 and first.get(key) == 2
    first.delete(key)
    assert second.get(key) is None


def test_a_url_that_names_no_cluster_fails_clearly() -> None:
    async def attempt(url: str) -> BaseException:
        client = fast_client(url, connect_timeout=0.5, command_timeout=1)
        try:
            await client.execute("GET", "x")
        except BaseException as error:  # noqa: BLE001 (the error is what the test reads)
            return error
        finally:
            await client.close()
        raise AssertionError("a command went through")

    nobody = asyncio.run(attempt(f"redis+cluster://127.0.0.1:{live.free_port()}"))
    assert isinstance(nobody, RedisConnectionError)
    assert "no node of the Redis Cluster answered CLUSTER SLOTS" in str(nobody)
    # A plain Redis (cluster support off) named as a cluster: the same error, with Redis's reason.
    plain = asyncio.run(attempt(settings.REDIS_URL.replace("redis://", "redis+cluster://", 1)))
    assert isinstance(plain, RedisConnectionError) and "cluster support disabled" in str(plain)


def _settings_outcome(**env: str) -> subprocess.CompletedProcess[str]:
    """Load the settings in a fresh process with ``env``; print the cache backend and the broker."""
    environment = live.server_env(**env)
    environment.pop("CELERY_BROKER_URL", None)
    environment.update(env)
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.CACHES['default']['BACKEND'], s.CELERY_BROKER_URL)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, cwd=live.ROOT, capture_output=True, text=True, timeout=60
    )


def test_settings_refuse_a_braced_prefix_and_a_cluster_without_a_broker_of_its_own() -> None:
    braced = _settings_outcome(COSTCONTROL_REDIS_PREFIX="cc{org:1}:")
    assert braced.returncode != 0 and "must not contain braces" in braced.stderr
    cluster = "redis+cluster://127.0.0.1:7000"
    no_broker = _settings_outcome(REDIS_URL=cluster)
    assert no_broker.returncode != 0 and "CELERY_BROKER_URL" in no_broker.stderr
    ok = _settings_outcome(REDIS_URL=cluster, CELERY_BROKER_URL="amqp://guest@127.0.0.1:5672//")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["costcontrol.cluster_cache.RedisClusterCache", "amqp://guest@127.0.0.1:5672//"]


def test_two_gateways_on_a_cluster_never_overspend_a_hard_budget(
    cluster_url: str, tenant: Tenant, settings: Any
) -> None:
    env = {"REDIS_URL": cluster_url, "CELERY_BROKER_URL": settings.REDIS_URL}
    started = [live.start_gateway(**env) for _ in range(2)]
    urls = [url for _process, url in started]
    try:
        # The control plane announces the budget and limits on the cluster; both gateways hear of them.
        settings.REDIS_URL = cluster_url
        amount = Decimal("0.05")
        budget = budget_create(
            organization=tenant.org, name="tight", scope=BudgetScope.PROJECT, project=tenant.project, amount_usd=amount
        )
        rate_limit_set(project=tenant.project, requests_per_minute=100_000, max_concurrent=1_000)
        _wait_for_policy(cluster_url, urls, tenant.key.plaintext)
        outcomes = asyncio.run(_spend(urls, tenant.key.plaintext))
    finally:
        for process, _url in started:
            process.stop()

    state = sync_client(cluster_url)
    while ledger_ingest_batch(client=state, consumer="tests", block_ms=0):
        pass
    rows = LedgerEntry.objects.filter(project=tenant.project)
    served = rows.filter(status_code=200)
    assert outcomes.count("ok") == served.count() > 0
    assert outcomes.count("refused") == rows.filter(status_code=429, error_code="insufficient_quota").count() > 0
    spent = served.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    prices = OPENAI_PRICES["gpt-4o"]
    largest_prompt = max(r.prompt_tokens for r in served)
    one_request_max = (largest_prompt * prices[0] + MAX_TOKENS * prices[2]) / Decimal(1_000_000)
    assert spent <= amount + one_request_max, f"spent {spent} against a {amount} budget"

    # The admissions' keys that outlive them (the budget's counter, the project's window; the in-flight
    # set empties as requests end) are all in the organisation's slot.
    tag = names.org_tag(tenant.org.id)
    keys = [k.decode() for k in state.scan_iter(match=f"{settings.REDIS_PREFIX}{tag}:*", count=1000)]
    assert any(k.startswith(f"{settings.REDIS_PREFIX}{tag}:budget:{budget.id}:") for k in keys), keys
    assert f"{settings.REDIS_PREFIX}{tag}:rl:project:{tenant.project.id}:win" in keys
    assert {key_slot(k.encode()) for k in keys} == {key_slot(tag.strip("{}").encode())}
    state.close()


def _wait_for_policy(cluster_url: str, urls: list[str], key: str) -> None:
    """Until every gateway serves the policy version last announced on the cluster."""
    client = sync_client(cluster_url)
    wanted = int(client.get(names.policy_version(settings.REDIS_PREFIX)) or 0)
    client.close()
    assert wanted >= 2, "the budget and the limit were not announced on the cluster"

    def caught_up() -> bool:
        versions = [
            int(sdk(url, key).models.with_raw_response.list().headers["x-costcontrol-policy-version"]) for url in urls
        ]
        return all(version >= wanted for version in versions)

    live.wait_until(caught_up, timeout=5)


async def _spend(urls: list[str], key: str) -> list[str]:
    clients = [openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=30) for url in urls]

    async def one(i: int) -> str:
        try:
            await clients[i % 2].chat.completions.create(
                model="gpt-4o", max_tokens=MAX_TOKENS,
                messages=[{"role": "user", "content": f"Write a haiku about invoices, #{i}."}],
            )  # fmt: skip
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota", exc.message
            return "refused"

    try:
        return list(await asyncio.gather(*(one(i) for i in range(REQUESTS))))
    finally:
        for client in clients:
            await client.close()


def test_a_cluster_puts_each_wait_on_the_node_that_took_the_write(cluster_url: str) -> None:
    """Keys on two primaries in one durable batch: a WAIT on each of them, after its own share."""
    client = redis.Redis.from_url(cluster_url.replace("redis+cluster://", "redis://"))
    slots = client.execute_command("CLUSTER", "SLOTS")
    client.close()
    # A primary may serve several ranges (the tests above move slots).
    ranges = [(int(start), int(end), int(primary[1])) for start, end, primary, *_ in slots]
    by_port = {port for _start, _end, port in ranges}
    keys: dict[int, str] = {}
    for n in range(10_000):
        key = f"{settings.REDIS_PREFIX}spread:{n}"
        slot = key_slot(key.encode())
        port = next(p for start, end, p in ranges if start <= slot <= end)
        keys.setdefault(port, key)
        if len(keys) == 2:
            break
    (port_a, key_a), (port_b, key_b) = keys.items()
    others = [p for p in by_port if p not in keys]

    async def scenario() -> list[Any]:
        fast = FastRedisCluster(cluster_url, command_timeout=2, wait=ReplicaWait(1, 20))
        try:
            return await fast.execute_many([("SET", key_a, b"a"), ("SET", key_b, b"b")], durable=True)
        finally:
            await fast.close()

    before = {p: _wait_calls(p) for p in by_port}
    assert asyncio.run(scenario()) == [b"OK", b"OK"]
    after = {p: _wait_calls(p) for p in by_port}
    assert after[port_a] == before[port_a] + 1 and after[port_b] == before[port_b] + 1
    assert all(after[p] == before[p] for p in others), "no WAIT where nothing was written"


def _wait_calls(port: int) -> int:
    """How many WAIT commands the server at ``port`` has run."""
    return int(redis.Redis(port=port).info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
