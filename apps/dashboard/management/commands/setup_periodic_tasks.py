"""Declare the periodic jobs in django-celery-beat (idempotent; `make run` calls it)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django_celery_beat.models import IntervalSchedule, PeriodicTask

# name -> (task, every N seconds)
PERIODIC_TASKS = {
    "Ledger hourly roll-ups": ("ledger.rollups_refresh", 60),
    "Ledger stragglers (dead consumers)": ("ledger.ingest_stragglers", 60),
    "Held responses to Postgres": ("ledger.ingest_held_responses", 10),
    "Held responses back into Redis (when lost)": ("ledger.restore_held_responses", 60),
    "Ledger partitions ahead": ("ledger.partitions_ensure", 3600),
    "Ledger retention": ("ledger.retention_apply", 86400),
    "Budget thresholds": ("budgets.check_thresholds", 60),
    "Background responses' real usage": ("budgets.read_back_background", 30),
    "Spend-rate anomalies": ("budgets.detect_anomalies", 60),
    "Budget period history": ("budgets.record_periods", 300),
    "Alert re-delivery": ("budgets.redeliver_alerts", 120),
    "Cache expiry and eviction": ("cache.evict", 300),
    "Shadow comparisons": ("routing.ingest_shadow", 10),
    "Semantic-cache trial comparisons": ("opportunities.ingest_trials", 10),
    "Trial spend and daily caps": ("opportunities.hold_trial_caps", 60),
    "Self-hosted deployments health": ("deployments.supervise", 30),
    "Batches with unclaimed lines": ("batches.resume", 60),
    "Provider batches": ("batches.poll", 30),
    "Expired exports": ("reports.export_jobs_expire", 3600),
    "Undecryptable secrets": ("providers.check_secrets", 300),
}


class Command(BaseCommand):
    help = "Create or update the periodic tasks the product needs."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, (task, seconds) in PERIODIC_TASKS.items():
            schedule, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
            PeriodicTask.objects.update_or_create(
                name=name, defaults={"task": task, "interval": schedule, "enabled": True}
            )
            self.stdout.write(f"periodic task: {name} ({task}) every {seconds}s")
