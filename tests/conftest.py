"""Shared fixtures: real Postgres, real Redis, real server processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from tests import live
from tests.factories import People, Tenant, people_make, tenant_make


@pytest.fixture(scope="session", autouse=True)
def _forget_redis_keys() -> Iterator[None]:
    """Remove this session's Redis keys (they all share the session's prefix)."""
    yield
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=settings.REDIS_PREFIX + "*", count=1000):
        client.delete(key)


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
