from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class LedgerConfig(AppConfig):
    name = "apps.ledger"
    label = "ledger"

    def ready(self) -> None:
        from apps.ledger.checks import redis_persistence

        checks.register(redis_persistence, checks.Tags.database, deploy=True)
