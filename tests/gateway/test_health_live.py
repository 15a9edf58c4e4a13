"""Liveness and readiness of a gateway process, and `manage.py status`, against servers we stop for real."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from io import StringIO
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.core import names
from apps.keys.models import ApiKey
from costcontrol import compiled
from tests import live
from tests.factories import Tenant
from tests.gateway.test_redis_failure import RedisServer, own_redis  # noqa: F401 (the fixture)

pytestmark = pytest.mark.live


def get(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def status_command(*gateways: str) -> tuple[str, str]:
    """`manage.py status`'s output, and its error ('' when nothing is down)."""
    out = StringIO()
    try:
        call_command("status", gateway=list(gateways), stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), ""


def test_unready_when_redis_stops(tenant: Tenant, own_redis: RedisServer) -> None:  # noqa: F811
    process, url = live.start_gateway(REDIS_URL=own_redis.url)
    base = url.removesuffix("/v1")
    try:
        code, body = get(base + "/readyz")
        assert code == 200 and body["status"] == "ready"
        assert {name: check["ok"] for name, check in body["checks"].items()} == {
            "redis": True, "postgres": True, "policy_snapshot": True
        }  # fmt: skip
        assert get(base + "/healthz") == (200, {"status": "ok"})

        own_redis.kill()
        code, body = get(base + "/readyz")
        assert code == 503 and body["status"] == "unready"
        assert body["checks"]["redis"] == {"ok": False, "error": "ConnectionError"}
        assert body["checks"]["postgres"]["ok"] is True
        # Alive all the same: a load balancer stops sending it requests, nothing restarts it.
        assert get(base + "/healthz") == (200, {"status": "ok"})

        output, error = status_command(base)
        assert f"gateway {base}" in error
        assert "not ready: redis failing" in output
        assert "postgres" in output and "stream ledger" in output
        # This host's build of the hot path, as the gateways started here would load it (costcontrol.compiled).
        expected = r"ok\s+compiled \(" if compiled.fresh_build()[0] else r"warn\s+plain Python: "
        assert re.search(rf"^hot path\s+{expected}", output, re.MULTILINE), output
    finally:
        process.stop()


def _probe_backends(gateway_pid: int) -> list[int]:
    with psycopg.connect(settings.DATABASE_URL, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"costcontrol-readyz-{gateway_pid}",)
        ).fetchall()
    return [row[0] for row in rows]


def test_readiness_keeps_one_postgres_connection_and_replaces_a_dead_one(tenant: Tenant) -> None:
    process, url = live.start_gateway()
    base = url.removesuffix("/v1")
    try:
        for _ in range(5):
            assert get(base + "/readyz")[0] == 200
        kept = _probe_backends(process.proc.pid)
        assert len(kept) == 1  # five probes, one backend
        with psycopg.connect(settings.DATABASE_URL, autocommit=True) as connection:
            connection.execute("SELECT pg_terminate_backend(%s)", (kept[0],))
        # The kept connection is dead; the probe notices, reconnects once and still answers ready.
        code, body = get(base + "/readyz")
        assert code == 200 and body["checks"]["postgres"]["ok"] is True
        replaced = _probe_backends(process.proc.pid)
        assert len(replaced) == 1 and replaced != kept
    finally:
        process.stop()


def test_unready_while_the_policy_snapshot_cannot_be_rebuilt(tenant: Tenant) -> None:
    """A rebuild that cannot finish (a table locked) leaves the snapshot unconfirmed: unready until it can."""
    process, url = live.start_gateway(GATEWAY_POLICY_POLL_SECONDS="0.2", GATEWAY_READY_MAX_SNAPSHOT_AGE_SECONDS="1.5")
    base = url.removesuffix("/v1")
    try:
        live.wait_until(lambda: get(base + "/readyz")[0] == 200, timeout=10)
        with psycopg.connect(live.test_database_url()) as locker:
            locker.execute(f"LOCK TABLE {ApiKey._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            # A change announced: the gateway sees the version move and rebuilds, and the build waits.
            redis.Redis.from_url(settings.REDIS_URL).incr(names.policy_version(settings.REDIS_PREFIX))
            body = live.wait_until(lambda: (r := get(base + "/readyz"))[0] == 503 and r[1], timeout=10)
            assert body["checks"]["policy_snapshot"]["ok"] is False
            assert body["checks"]["policy_snapshot"]["age_seconds"] > 1.5
            assert body["checks"]["redis"]["ok"] is True and body["checks"]["postgres"]["ok"] is True
            output, error = status_command(base)
            assert "not ready: policy_snapshot failing" in output
            locker.rollback()
        live.wait_until(lambda: get(base + "/readyz")[0] == 200, timeout=10)
    finally:
        process.stop()


def test_health_endpoints_take_no_input_and_tell_nothing_about_tenants(gateway: str, tenant: Tenant) -> None:
    base = gateway.removesuffix("/v1")
    code, body = get(base + "/readyz?project=" + tenant.project.slug + "&%00=%ff")
    assert code == 200 and set(body) == {"status", "checks"}
    assert set(body["checks"]) == {"redis", "postgres", "policy_snapshot"}
    assert tenant.project.slug not in json.dumps(body)
    for path in ("/readyz", "/healthz"):
        code, error = get(base + path, method="POST", data=b"\xff" * 64)
        assert code == 405 and error["error"]["code"] == "method_not_allowed"
    # A key is neither needed nor looked at.
    request = urllib.request.Request(base + "/healthz", headers={"Authorization": "Bearer cc_live_garbage"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        assert response.status == 200
