"""Celery entry points for the cache."""

from __future__ import annotations

from celery import shared_task

from apps.cache.services import cache_evict
from apps.ledger.services import redis_client


@shared_task(name="cache.evict", time_limit=300, soft_time_limit=270)
def cache_evict_task() -> int:
    return cache_evict(client=redis_client())
