from __future__ import annotations

from django.apps import AppConfig


class PolicyConfig(AppConfig):
    name = "apps.policy"
    label = "policy"

    def ready(self) -> None:
        from apps.policy import announce

        announce.connect()
