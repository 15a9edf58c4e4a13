from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "apps.budgets"
    label = "budgets"

    def ready(self) -> None:
        from apps.budgets.selectors import budget_ledger_floors
        from apps.budgets.services import dead_letters_alert
        from apps.ledger.consumer import entries_dead_lettered
        from apps.ledger.retention import retention_floor

        def alert(*, organization_id: int, stream: str, count: int, error: str, day: Any, **_: Any) -> None:
            dead_letters_alert(organization_id=organization_id, stream=stream, count=count, error=error, day=day)

        entries_dead_lettered.connect(alert, dispatch_uid="budgets-dead-letters-alert", weak=False)

        def floors(*, now: Any, **_: Any) -> dict[int, Any]:
            return budget_ledger_floors(now=now)

        retention_floor.connect(floors, dispatch_uid="budgets-ledger-retention-floor", weak=False)
