"""Every periodic job names a registered task that Celery will actually run."""

from __future__ import annotations

import io

import pytest
from django.conf import settings
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from costcontrol.celery import app


@pytest.mark.django_db
def test_every_periodic_task_is_registered_with_consistent_time_limits() -> None:
    call_command("setup_periodic_tasks", stdout=io.StringIO())
    app.loader.import_default_modules()
    names = list(PeriodicTask.objects.values_list("task", flat=True))
    assert names
    for name in names:
        task = app.tasks[name]  # KeyError: beat would send a task no worker knows
        hard = task.time_limit or settings.CELERY_TASK_TIME_LIMIT
        soft = task.soft_time_limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
        # Celery refuses to send a task whose soft limit exceeds its hard one (beat logs and skips it).
        assert soft <= hard, f"{name}: soft_time_limit {soft} > time_limit {hard}"
