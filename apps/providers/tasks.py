"""Celery entry points for providers: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from apps.providers import services


@shared_task(name="providers.check_secrets", time_limit=120, soft_time_limit=110)
def secrets_check_task() -> int:
    return services.secrets_alert_unreadable()
