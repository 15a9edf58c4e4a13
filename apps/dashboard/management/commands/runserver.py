"""Django's runserver (with staticfiles' static serving), refusing non-loopback addresses under the dev settings."""

from __future__ import annotations

from typing import Any

from django.contrib.staticfiles.management.commands.runserver import Command as StaticfilesRunserver
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError

from costcontrol.loopback import require_loopback


class Command(StaticfilesRunserver):
    def run(self, **options: Any) -> None:
        try:
            # handle() has parsed the address into self.addr by the time it calls run().
            require_loopback(self.addr, what="runserver")  # type: ignore[attr-defined]
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        super().run(**options)
