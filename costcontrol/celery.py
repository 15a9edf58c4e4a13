"""The Celery application. Workers: `celery -A costcontrol worker -Q default,batch,gpu`."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costcontrol.settings.dev")

app = Celery("costcontrol")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
