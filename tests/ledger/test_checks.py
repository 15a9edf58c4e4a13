"""`manage.py check --deploy` says when the Redis holding the ledger stream has no persistence."""

from __future__ import annotations

import redis
from django.conf import settings

from apps.ledger.checks import redis_persistence


def test_the_deploy_check_matches_the_redis_it_talks_to() -> None:
    appendonly = redis.Redis.from_url(settings.REDIS_URL).config_get("appendonly")["appendonly"]
    ids = [message.id for message in redis_persistence()]
    assert ids == ([] if appendonly == "yes" else ["ledger.W001"])


def test_an_unreachable_redis_is_reported_not_raised(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    assert [message.id for message in redis_persistence()] == ["ledger.I001"]
