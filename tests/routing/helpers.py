"""Rules for tests, written through the same service the pages and the API use."""

from __future__ import annotations

from typing import Any

from apps.routing.models import RoutingRule
from apps.routing.services import rule_save, targets_parse
from tests.factories import Tenant


def rule_make(
    tenant: Tenant,
    *,
    name: str = "rule",
    primaries: str = "",
    fallbacks: str = "",
    shadow: str = "",
    **fields: Any,
) -> RoutingRule:
    """A rule on the tenant's project; targets written as on the form ("gpt-4o-mini @ sim 90", one per line)."""
    project = tenant.project
    return rule_save(
        project=project,
        fields={"name": name, **fields},
        primaries=targets_parse(project=project, text=primaries),
        fallbacks=targets_parse(project=project, text=fallbacks),
        shadow=targets_parse(project=project, text=shadow),
    )


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
