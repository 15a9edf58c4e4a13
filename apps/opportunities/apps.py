from __future__ import annotations

from django.apps import AppConfig


class OpportunitiesConfig(AppConfig):
    name = "apps.opportunities"
    verbose_name = "Savings opportunities"
