"""Re-encrypt every stored provider and channel secret with the first key of COSTCONTROL_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.audit.context import audited_command
from apps.budgets.secrets import secrets_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret with the first key of COSTCONTROL_ENCRYPTION_KEYS (run after putting a "
        "new key first; drop the old keys once it succeeded). Fails, naming them, if some secret decrypts with "
        "none of the keys."
    )

    @audited_command
    def handle(self, *args: Any, **options: Any) -> None:
        done, failed = secrets_reencrypt()
        self.stdout.write(f"re-encrypted {done} secret(s) with the first key")
        if failed:
            names = ", ".join(f"{row.kind} {row.id} ({row.name})" for row in failed)
            raise CommandError(
                f"{len(failed)} secret(s) decrypt with none of the keys and were left as they are: {names}"
            )
