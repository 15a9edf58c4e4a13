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


# A conversation for pruning tests: chat messages, which are Responses input items as they are.
SYSTEM = {"role": "system", "content": "You answer questions about Acme's billing."}
STALE = "stale answer from the first turn"


def chat_turns(turns: int) -> list[dict[str, Any]]:
    """A system prompt and ``turns`` alternating messages; the first one tells the simulator what to
    answer, so an answer other than ``STALE`` shows that it was left out."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        if i % 2:
            messages.append({"role": "assistant", "content": f"Answer number {i} about invoices."})
        else:
            directive = f" [[sim:answer={STALE}]]" if i == 0 else ""
            messages.append({"role": "user", "content": f"Question number {i} about invoices?{directive}"})
    return messages
