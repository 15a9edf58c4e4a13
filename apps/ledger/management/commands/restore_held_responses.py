"""Write the held conversations Postgres keeps back into Redis (after Redis lost them)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.ledger.held_restore import held_responses_restore


class Command(BaseCommand):
    help = (
        "Restore the live conversations the gateway holds for Chat-only providers (HeldResponse) into Redis, "
        "where Redis lacks them. Without --force it does nothing while Redis still has the marker of the last "
        "restore (the ledger.restore_held_responses task runs it so every minute)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--force", action="store_true", help="Restore whatever the marker says")

    def handle(self, *args: Any, **options: Any) -> None:
        restored = held_responses_restore(force=options["force"])
        if restored is None:
            self.stdout.write("nothing lost: Redis has the marker of the last restore (use --force to restore anyway)")
        else:
            self.stdout.write(f"restored {restored} held responses")
