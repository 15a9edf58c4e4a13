"""Set how long an organisation's ledger rows are kept (an operator's decision: storage is theirs)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.audit.context import audited_command
from apps.ledger.services import ledger_retention_set
from apps.tenancy.models import Organization


class Command(BaseCommand):
    help = (
        "Keep an organisation's ledger rows N days (--days), forever (--forever), or as LEDGER_RETENTION_DAYS "
        "says (--default). The daily ledger.retention_apply task applies it."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", required=True, help="Organisation slug")
        choice = parser.add_mutually_exclusive_group(required=True)
        choice.add_argument("--days", type=int)
        choice.add_argument("--forever", action="store_true")
        choice.add_argument("--default", action="store_true")

    @audited_command
    def handle(self, *args: Any, **options: Any) -> None:
        organization = Organization.objects.filter(slug=options["org"]).first()
        if organization is None:
            raise CommandError(f"no organisation with slug {options['org']!r}")
        try:
            ledger_retention_set(organization=organization, days=options["days"], use_default=options["default"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        kept = (
            "as the default says"
            if options["default"]
            else (f"{options['days']} days" if options["days"] else "forever")
        )
        self.stdout.write(f"{organization.slug}: ledger rows kept {kept}")
