"""The Celery application. Workers: `celery -A costcontrol worker -Q default,batch,gpu`."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import beat_init, task_failure, worker_init
from prometheus_client import Counter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costcontrol.settings.dev")

app = Celery("costcontrol")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Counted in the worker process that ran the task; /metrics sums every process's count when they share
# PROMETHEUS_MULTIPROC_DIR (costcontrol/metrics.py). Task names are ours: a bounded label.
TASK_FAILURES = Counter("costcontrol_celery_task_failures", "Celery tasks that raised, by task.", ["task"])


@task_failure.connect
def _count_failure(sender: Any = None, **_: Any) -> None:
    TASK_FAILURES.labels(getattr(sender, "name", None) or "unknown").inc()


@worker_init.connect
@beat_init.connect
def _broker_on_loopback(**_: Any) -> None:
    """Under the development settings a worker or beat reaches only a broker on loopback.

    SystemExit, because Celery logs and ignores ordinary exceptions raised by signal handlers.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from costcontrol.loopback import require_loopback

    broker = urlsplit(settings.CELERY_BROKER_URL)
    if broker.hostname is None:  # a Unix socket
        return
    try:
        require_loopback(broker.hostname, what="Celery's broker")
    except ImproperlyConfigured as exc:
        raise SystemExit(str(exc)) from None
