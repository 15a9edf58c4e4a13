"""Writes for routing: rules and their targets, pruning policies, and the shadow comparisons the gateway reports."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, QuerySet

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_saved, audit_snapshot, audit_stored
from apps.core import names
from apps.core.events import EVENT_FIELD, clean_id, shadow_event_clean
from apps.ledger.consumer import DeadLetter, dead_letters_report, store_or_bisect
from apps.ledger.stream import acknowledge, ensure_group, read_batch
from apps.providers.models import Price, Provider
from apps.routing.models import PrunePolicy, RoutingRule, RuleAction, RuleTarget, ShadowComparison, TargetRole
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)


def prune_policy_save(*, project: Project, feature: str, changes: dict[str, Any]) -> PrunePolicy:
    """Create or change the pruning policy of ``project``'s ``feature`` (blank: the whole project);
    gateways pick it up within a second (``apps.policy.announce``). ``ValidationError`` for values
    out of range."""
    policy = PrunePolicy.objects.filter(project=project, feature=feature).first() or PrunePolicy(
        project=project, feature=feature
    )
    before = audit_stored(policy)
    for name, value in changes.items():
        setattr(policy, name, value)
    policy.full_clean()
    policy.save()
    audit_saved(obj=policy, before=before)
    return policy


# --- targets as people write them ---------------------------------------------

# "gpt-4o-mini", "gpt-4o-mini @ openai", "gpt-4o-mini @ openai 90" (weight, for splits; "90%" works too)
_TARGET_LINE = re.compile(r"^(?P<model>[^\s@]+)(?:\s*@\s*(?P<provider>.+?))?(?:\s+(?P<weight>\d+)\s*%?)?$")


@dataclass(frozen=True)
class TargetSpec:
    provider: Provider
    model: str
    weight: int = 1

    def __str__(self) -> str:
        return f"{self.model} @ {self.provider.name} {self.weight}"


def targets_parse(*, project: Project, text: str) -> list[TargetSpec]:
    """Read one target per line. Without ``@ provider`` the project's default provider is used when it prices
    the model, else the one provider of the organisation that does; among several, the line must say which."""
    specs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        found = _TARGET_LINE.match(line)
        if found is None:
            raise ValidationError(f"Line {number}: write 'model', 'model @ provider' or 'model @ provider 90'.")
        model, provider_name = found["model"], (found["provider"] or "").strip()
        priced = Price.objects.filter(provider__organization_id=project.organization_id, model=model)
        if provider_name:
            provider = Provider.objects.filter(organization_id=project.organization_id, name=provider_name).first()
            if provider is None:
                raise ValidationError(f"Line {number}: no provider named '{provider_name}' in this organisation.")
            if not priced.filter(provider=provider).exists():
                raise ValidationError(f"Line {number}: {provider_name} has no price for '{model}'; add one first.")
        else:
            provider = _plain_target_provider(project=project, model=model, priced=priced, line=number)
        specs.append(TargetSpec(provider=provider, model=model, weight=int(found["weight"] or 1)))
    return specs


def _plain_target_provider(*, project: Project, model: str, priced: QuerySet[Price], line: int) -> Provider:
    if project.default_provider_id and priced.filter(provider_id=project.default_provider_id).exists():
        return Provider.objects.get(pk=project.default_provider_id)
    providers = list(Provider.objects.filter(pk__in=priced.values("provider_id")).order_by("name")[:4])
    if not providers:
        raise ValidationError(f"Line {line}: no provider of this organisation prices '{model}'.")
    if len(providers) > 1:
        # Never the first by id: which provider serves (and bills) a plain name is the person's choice.
        examples = ", ".join(f"'{model} @ {provider.name}'" for provider in providers[:3])
        raise ValidationError(
            f"Line {line}: several providers price '{model}' and this project's default provider does not;"
            f" write which one, e.g. {examples}."
        )
    return providers[0]


def targets_text(targets: list[RuleTarget]) -> str:
    """The lines ``targets_parse`` reads back, for editing."""
    return "\n".join(f"{t.model} @ {t.provider.name}" + (f" {t.weight}" if t.weight != 1 else "") for t in targets)


# --- rules --------------------------------------------------------------------


def _check_targets(
    *, action: str, primaries: list[TargetSpec], shadow: list[TargetSpec], shadow_percent: Decimal
) -> None:
    errors: dict[str, str] = {}
    if action == RuleAction.SPLIT and len(primaries) < 2:
        errors["primaries"] = "A split needs at least two models, each with a weight."
    if action == RuleAction.SPLIT and primaries and sum(p.weight for p in primaries) == 0:
        errors["primaries"] = "At least one weight must be above zero."
    if action == RuleAction.CASCADE and len(primaries) != 2:
        errors["primaries"] = "A cascade needs exactly two models: the cheap one first, then the strong one."
    if action == RuleAction.ROUTE and len(primaries) > 1:
        errors["primaries"] = "A route rule sends to one model; list the others as fallbacks."
    if len(shadow) > 1:
        errors["shadow"] = "One shadow model per rule."
    if shadow_percent > 0 and not shadow:
        errors["shadow"] = "Name the shadow model, or set the shadow share to 0."
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def rule_save(
    *,
    project: Project,
    rule: RoutingRule | None = None,
    fields: dict[str, Any],
    primaries: list[TargetSpec],
    fallbacks: list[TargetSpec],
    shadow: list[TargetSpec],
) -> RoutingRule:
    """Create a rule (appended after the project's last one) or update ``rule``, replacing its targets."""
    before = None if rule is None else rule_snapshot(rule)
    current = rule or RoutingRule()  # fields not given (a partial update) keep the rule's values
    _check_targets(
        action=fields.get("action", current.action),
        primaries=primaries,
        shadow=shadow,
        shadow_percent=Decimal(fields.get("shadow_percent", current.shadow_percent) or 0),
    )
    if rule is None:
        last = RoutingRule.objects.filter(project=project).aggregate(last=Max("position"))["last"]
        rule = RoutingRule(project=project, position=0 if last is None else last + 1)
    for name, value in fields.items():
        setattr(rule, name, value)
    rule.full_clean()
    rule.save()
    rule.targets.all().delete()
    by_role = {TargetRole.PRIMARY: primaries, TargetRole.FALLBACK: fallbacks, TargetRole.SHADOW: shadow}
    rows = [
        RuleTarget(rule=rule, role=role, position=i, provider=spec.provider, model=spec.model, weight=spec.weight)
        for role, specs in by_role.items()
        for i, spec in enumerate(specs)
    ]
    for row in rows:
        row.full_clean()
    # bulk_create sends no signal; the rule's own save above announces the change (apps.policy.announce),
    # and the announcement goes out when this transaction commits, targets included.
    RuleTarget.objects.bulk_create(rows)
    audit_saved(obj=rule, before=before, after=rule_snapshot(rule))
    return rule


def rule_snapshot(rule: RoutingRule) -> dict[str, Any]:
    """The rule's fields and its targets (as the lines people write), for the audit log."""
    targets = list(rule.targets.select_related("provider").order_by("role", "position"))
    return audit_snapshot(
        rule,
        **{name: targets_text([t for t in targets if t.role == role]) for name, role in TARGET_ROLES.items()},
    )


# A rule's targets by the name forms and the API give each role.
TARGET_ROLES = {"primaries": TargetRole.PRIMARY, "fallbacks": TargetRole.FALLBACK, "shadow": TargetRole.SHADOW}


@transaction.atomic
def rule_move(*, rule: RoutingRule, offset: int) -> None:
    """Move a rule up (-1) or down (+1) in its project's order, renumbering 0..n-1."""
    rules = list(RoutingRule.objects.select_for_update().filter(project_id=rule.project_id).order_by("position", "id"))
    index = next(i for i, r in enumerate(rules) if r.pk == rule.pk)
    before = audit_snapshot(rules[index])
    other = index + offset
    if 0 <= other < len(rules):
        rules[index], rules[other] = rules[other], rules[index]
    for position, item in enumerate(rules):
        if item.position != position:
            item.position = position
            item.save(update_fields=["position", "updated_at"])
    moved = next(r for r in rules if r.pk == rule.pk)
    audit_record(action=AuditAction.MOVE, obj=moved, before=before, after=audit_snapshot(moved))


@transaction.atomic
def rule_delete(*, rule: RoutingRule) -> None:
    audit_record(action=AuditAction.DELETE, obj=rule, before=rule_snapshot(rule))
    rule.delete()


# --- shadow comparisons -----------------------------------------------------------


def _comparison(raw: Any) -> ShadowComparison:
    """The row for one shadow event, cleaned again here (the gateway cleans it before the XADD)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("request_id"), str) or not raw["request_id"]:
        raise TypeError("a shadow event is a JSON object with a request_id")
    event = shadow_event_clean(raw)
    return ShadowComparison(
        request_id=event["request_id"],
        created_at=dt.datetime.fromtimestamp(float(event["created_at"]), dt.UTC),
        rule_id=_row_id(event["rule_id"]),
        project_id=_row_id(event["project_id"]),
        primary_model=event["primary_model"],
        shadow_model=event["shadow_model"],
        primary_latency_ms=int(event["primary_latency_ms"]),
        shadow_latency_ms=int(event["shadow_latency_ms"]),
        primary_cost=Decimal(event["primary_cost"]),
        shadow_cost=Decimal(event["shadow_cost"]),
        shadow_status=int(event["shadow_status"]),
        exact_match=bool(event["exact_match"]),
        normalized_match=bool(event["normalized_match"]),
        similarity=event.get("similarity"),
        confidence=event.get("confidence"),
        primary_text=event["primary_text"],
        shadow_text=event["shadow_text"],
    )


def _row_id(value: Any) -> int:
    found = clean_id(value)
    if found is None:
        raise ValueError(f"not a row id: {value!r}")
    return found


def shadow_stream() -> str:
    return names.shadow_stream(settings.REDIS_PREFIX)


def shadow_ingest_batch(*, client: redis.Redis, consumer: str, count: int = 500, block_ms: int = 0) -> int:
    """Store up to ``count`` shadow comparisons from the gateway's stream; returns how many were handled.

    Acknowledged only after the insert committed; request ids are unique, so a
    re-read never duplicates. Events for rules deleted since are dropped. An event
    that cannot be read or stored goes to the dead-letter stream; the others are stored.
    """
    stream = shadow_stream()
    ensure_group(client, stream)
    entries = read_batch(client, stream, consumer, count=count, block_ms=block_ms, claim_idle_ms=30_000)
    if not entries:
        return 0
    rows: list[tuple[bytes, dict[Any, Any], ShadowComparison]] = []
    dead: list[DeadLetter] = []
    for entry_id, fields in entries:
        if not fields:
            continue
        try:
            rows.append((entry_id, fields, _comparison(orjson.loads(fields[EVENT_FIELD]))))
        except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
            dead.append((entry_id, fields, f"unreadable: {type(exc).__name__}: {exc}"[:1000]))
    live_rules = set(RoutingRule.objects.filter(id__in={r.rule_id for _i, _f, r in rows}).values_list("id", flat=True))
    refused = store_or_bisect(
        [row for row in rows if row[2].rule_id in live_rules],
        lambda chunk: ShadowComparison.objects.bulk_create([r for _i, _f, r in chunk], ignore_conflicts=True),
    )
    dead += [(entry_id, fields, error) for (entry_id, fields, _row), error in refused]
    dead_letters_report(stream=stream, dead=dead, field=EVENT_FIELD)
    acknowledge(client, stream, [entry_id for entry_id, _fields in entries], dead_letters=dead)
    return len(entries)
