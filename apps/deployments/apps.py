from __future__ import annotations

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "apps.deployments"
    verbose_name = "Self-hosted deployments"
