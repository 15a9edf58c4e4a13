"""The Celery application. Workers: `celery -A costcontrol worker -Q default,batch,gpu`."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import beat_init, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costcontrol.settings.dev")

app = Celery("costcontrol")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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
