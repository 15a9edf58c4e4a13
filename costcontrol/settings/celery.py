"""Celery and django-celery-beat settings (read by base.py)."""

from __future__ import annotations

from costcontrol.env import env_str

# base.py imports this module at its end, so REDIS_URL is known by then.
from costcontrol.settings.base import REDIS_CLUSTER, REDIS_URL  # noqa: E402

# Celery's Redis transport speaks to one server: with a Redis Cluster for state, the broker is set apart.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") if REDIS_CLUSTER else env_str("CELERY_BROKER_URL", "") or REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "batches.*": {"queue": "batch"},
    "deployments.*": {"queue": "gpu"},
}
CELERY_TASK_TIME_LIMIT = 15 * 60
CELERY_TASK_SOFT_TIME_LIMIT = 14 * 60
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
