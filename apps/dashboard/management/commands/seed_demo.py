"""Create the demo organisation, project, provider and people; print a fresh key last.

Idempotent: running it again updates the demo rows in place and issues one more key.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.audit.context import audited_command
from apps.keys.services import key_issue
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import alias_set, provider_create, provider_update
from apps.routing.services import rule_save, targets_parse
from apps.tenancy.models import Organization, Project, Role
from apps.tenancy.services import (
    membership_set,
    organization_create,
    project_create,
    project_set_default_provider,
    team_create,
)

DEMO_PASSWORD = "demo-password"
DEMO_ANTHROPIC = "Simulated Anthropic"
DEMO_CLAUDE = "claude-haiku-4-5"
DEMO_PEOPLE = {  # username -> role
    "lead": Role.OWNER,
    "dev": Role.DEVELOPER,
    "finance": Role.FINANCE,
}


class Command(BaseCommand):
    help = "Seed a working demo (no external API key needed) and print a key for project 'demo'."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--upstream", default=None, help="Base URL of the provider (default: the simulated upstream)"
        )

    @audited_command
    def handle(self, *args: Any, **options: Any) -> None:
        upstream = (options["upstream"] or settings.SIMULATED_UPSTREAM_URL).rstrip("/")
        with transaction.atomic():
            org = Organization.objects.filter(slug="demo").first() or organization_create(name="Demo Org", slug="demo")
            team = org.teams.filter(slug="platform").first() or team_create(organization=org, name="Platform")
            for username, role in DEMO_PEOPLE.items():
                user = User.objects.filter(username=username).first()
                if user is None:
                    user = User.objects.create_user(username=username, password=DEMO_PASSWORD)
                membership_set(organization=org, user=user, role=role, team=team if role == Role.DEVELOPER else None)
            provider = Provider.objects.filter(organization=org, name="Simulated upstream").first()
            if provider is None:
                provider = provider_create(
                    organization=org, name="Simulated upstream", kind=ProviderKind.SIMULATED, base_url=upstream
                )
            else:
                provider_update(
                    provider=provider,
                    name=provider.name,
                    base_url=upstream,
                    secret="sk-simulated",  # the upstream may have moved: a secret is bound to its host
                    is_active=True,
                )
            _seed_anthropic(org, upstream)
            project = Project.objects.filter(slug="demo").first() or project_create(
                organization=org, name="Demo", slug="demo", team=team
            )
            project_set_default_provider(project=project, provider=provider)
            alias_set(project=project, alias="default-chat", provider=provider, model="gpt-4o-mini")
            if not project.routing_rules.exists():
                _seed_rules(project)
            issued = key_issue(project=project, name="demo key", default_feature="demo")
        self.stderr.write(
            f"Demo ready: org 'demo', project 'demo', provider at {upstream}.\n"
            f"Log in as lead / dev / finance with password {DEMO_PASSWORD!r}.\n"
            f"API key for project 'demo' (shown once):"
        )
        self.stdout.write(issued.plaintext)


def _seed_rules(project: Project) -> None:
    """Two example rules: a confidence cascade for the "triage" feature and a 20% shadow of gpt-4o."""
    rule_save(
        project=project,
        fields={"name": "Triage: cheap model first", "match_features": ["triage"], "action": "cascade"},
        primaries=targets_parse(project=project, text="gpt-4o-mini\ngpt-4o"),
        fallbacks=[],
        shadow=[],
    )
    rule_save(
        project=project,
        fields={"name": "Try gpt-4.1 beside gpt-4o", "match_models": ["gpt-4o"], "shadow_percent": 20},
        primaries=[],
        # A rate-limited gpt-4o falls back to gpt-4o-mini, then across vendors to Claude.
        fallbacks=targets_parse(project=project, text=f"gpt-4o-mini\n{DEMO_CLAUDE}"),
        shadow=targets_parse(project=project, text="gpt-4.1"),
    )


def _seed_anthropic(org: Organization, upstream: str) -> Provider:
    """The simulated upstream again, as an Anthropic-kind provider: it speaks the Messages API at /v1/messages."""
    provider = Provider.objects.filter(organization=org, name=DEMO_ANTHROPIC).first()
    if provider is None:
        return provider_create(
            organization=org, name=DEMO_ANTHROPIC, kind=ProviderKind.SIMULATED_ANTHROPIC, base_url=upstream
        )
    return provider_update(provider=provider, name=provider.name, base_url=upstream, secret="sk-simulated",
                           is_active=True)  # fmt: skip
