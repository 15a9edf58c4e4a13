"""Create an organisation and make an existing user its owner: the first step of a stack started
without the demo (`runstack --no-simulator`), where no seed creates one and the dashboard needs an
owner to create projects, providers and keys."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.audit.context import audited_command
from apps.tenancy.services import organization_create


class Command(BaseCommand):
    help = "Create an organisation owned by an existing user (create one with createsuperuser)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The organisation's name")
        parser.add_argument("--owner", required=True, help="Username of its owner")
        parser.add_argument("--slug", default="", help="Defaults to the name, slugified")

    @audited_command
    def handle(self, *args: Any, **options: Any) -> None:
        owner = User.objects.filter(username=options["owner"]).first()
        if owner is None:
            raise CommandError(f"no user {options['owner']!r}; create one with `manage.py createsuperuser`")
        try:
            org = organization_create(name=options["name"], owner=owner, slug=options["slug"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Organisation {org.name!r} ({org.slug}) created, owned by {owner.username}.")
