"""Celery entry points for budgets and alerts: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from apps.budgets import background, secrets, services
from apps.budgets.models import AlertDelivery


@shared_task(
    name="budgets.alert_deliver",
    autoretry_for=(Exception,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=5,
    time_limit=60,
    soft_time_limit=50,
)
def alert_deliver_task(delivery_id: int) -> str:
    delivery = AlertDelivery.objects.select_related("alert", "channel").filter(id=delivery_id).first()
    if delivery is None:
        return "gone"  # its alert or channel was deleted since: nothing to send, nothing to retry
    return services.alert_deliver(delivery=delivery).status


@shared_task(name="budgets.read_back_background", time_limit=120, soft_time_limit=110)
def background_usage_read_back_task() -> int:
    """Bill background responses that finished at their real usage (``apps.budgets.background``)."""
    return background.background_usage_read_back()


@shared_task(name="budgets.check_thresholds", time_limit=120, soft_time_limit=110)
def budgets_check_thresholds_task() -> int:
    return services.budgets_check_thresholds()


@shared_task(name="budgets.detect_anomalies", time_limit=120, soft_time_limit=110)
def anomalies_detect_task() -> int:
    return services.anomalies_detect()


@shared_task(name="budgets.record_periods", time_limit=300, soft_time_limit=280)
def budget_periods_record_task() -> int:
    return services.budget_periods_record()


@shared_task(name="budgets.redeliver_alerts", time_limit=60, soft_time_limit=50)
def alerts_redeliver_task() -> int:
    return services.alerts_redeliver()


# Named for the provider secrets it mostly checks (the name beat schedules already use).
@shared_task(name="providers.check_secrets", time_limit=120, soft_time_limit=110)
def secrets_check_task() -> int:
    return secrets.secrets_alert_unreadable()
