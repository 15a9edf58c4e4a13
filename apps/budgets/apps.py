from __future__ import annotations

from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "apps.budgets"
    label = "budgets"
