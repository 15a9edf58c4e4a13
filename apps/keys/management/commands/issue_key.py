"""Issue an API key for a project; the key is the last line of stdout."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.audit.context import audited_command
from apps.keys.services import key_issue
from apps.tenancy.models import Project


class Command(BaseCommand):
    help = "Issue an API key for the project with the given slug and print it (shown once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", required=True, help="Project slug")
        parser.add_argument("--name", default="cli key")
        parser.add_argument("--feature", default="", help="Default feature tag for requests made with this key")
        parser.add_argument(
            "--allow-model",
            action="append",
            default=[],
            dest="allowed_models",
            help="Restrict the key to this model (repeatable)",
        )

    @audited_command
    def handle(self, *args: Any, **options: Any) -> None:
        try:
            project = Project.objects.get(slug=options["project"])
        except Project.DoesNotExist:
            raise CommandError(f"no project with slug {options['project']!r}") from None
        issued = key_issue(
            project=project,
            name=options["name"],
            allowed_models=options["allowed_models"],
            default_feature=options["feature"],
        )
        self.stderr.write(f"Issued key {issued.api_key.display_prefix} for project {project.slug}; it is shown once:")
        self.stdout.write(issued.plaintext)
