"""Shared fixtures: real Postgres, real Redis, real server processes on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands import flush
from django.db import OperationalError

from tests import live
from tests.factories import People, Tenant, people_make, tenant_make


@pytest.fixture(scope="session", autouse=True)
def _forget_redis_keys() -> Iterator[None]:
    """Remove this session's Redis keys (they all share the session's prefix)."""
    yield
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=settings.REDIS_PREFIX + "*", count=1000):
        client.delete(key)


@pytest.fixture(scope="session", autouse=True)
def _flush_outlives_deadlocks() -> Iterator[None]:
    """Run a transactional test's teardown flush again when Postgres picks it as a deadlock victim.

    The flush TRUNCATEs every table in one statement while the live gateway and consumer processes
    may still be reading a few of them (a snapshot rebuild after the test's last change); a reader
    holding one table's lock while waiting for another's can deadlock with it. Only tests flush.
    """
    handle = flush.Command.handle

    def handle_retrying(self: flush.Command, **options: Any) -> Any:
        for attempt in range(5):
            try:
                return handle(self, **options)
            except CommandError as exc:
                if (
                    attempt == 4
                    or not isinstance(exc.__cause__, OperationalError)
                    or "deadlock" not in str(exc.__cause__)
                ):
                    raise
                time.sleep(0.2)
        return None

    flush.Command.handle = handle_retrying  # type: ignore[method-assign]
    yield
    flush.Command.handle = handle  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """Base URL of a simulated upstream (a real OpenAI-compatible HTTP server)."""
    process, url = live.start_upstream()
    yield url
    process.stop()


@pytest.fixture(scope="session")
def gateway(django_db_setup: None, upstream: str) -> Iterator[str]:
    """Base URL (…/v1) of a gateway process serving costcontrol.asgi:application."""
    # No retries by default here, so upstream errors reach tests at once; routing tests set a provider's retries.
    process, url = live.start_gateway(GATEWAY_UPSTREAM_TIMEOUT_SECONDS="3", GATEWAY_RETRIES="0")
    yield url
    process.stop()


@pytest.fixture
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def tenant(transactional_db: None, upstream: str) -> Tenant:
    """A committed tenant (visible to gateway processes) on the simulated upstream."""
    return tenant_make(upstream_url=upstream)


@pytest.fixture
def people(db: None) -> People:
    """Owner, member (developer in the team), finance viewer, and an outsider from another org."""
    return people_make()
