"""Recording audit events. Every service that changes keys, providers, prices, budgets, limits,
routing rules, cache policies and entries, deployments, memberships, channels, projects, teams or
aliases calls ``audit_record`` once, inside the transaction of its change.

A snapshot is a model row's fields as JSON. Values that work as passwords are masked before they
are stored: secrets and key hashes become ``****`` and a short fingerprint of the stored value (so
a reader sees that a secret was entered again, never the secret), and secret-bearing URLs (webhook
targets, provider and server URLs) keep their scheme and host (``https://hooks.slack.com/…****``)
and the same fingerprint. Large or private columns (cached prompts, answers, embeddings) are left out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

from django.db import models

from apps.audit.context import current_actor
from apps.audit.models import AuditAction, AuditEvent, ObjectType
from apps.tenancy.permissions import mask, placement

# By model (app_label.model_name): the object type recorded.
_TYPES: dict[str, str] = {
    "tenancy.organization": ObjectType.ORGANIZATION,
    "tenancy.team": ObjectType.TEAM,
    "tenancy.membership": ObjectType.MEMBERSHIP,
    "tenancy.project": ObjectType.PROJECT,
    "keys.apikey": ObjectType.KEY,
    "providers.provider": ObjectType.PROVIDER,
    "providers.price": ObjectType.PRICE,
    "providers.modelalias": ObjectType.ALIAS,
    "budgets.budget": ObjectType.BUDGET,
    "budgets.ratelimit": ObjectType.RATE_LIMIT,
    "budgets.notificationchannel": ObjectType.CHANNEL,
    "routing.routingrule": ObjectType.ROUTING_RULE,
    "routing.prunepolicy": ObjectType.PRUNE_POLICY,
    "llmcache.cachepolicy": ObjectType.CACHE_POLICY,
    "llmcache.cacheentry": ObjectType.CACHE_ENTRY,
    "deployments.deployment": ObjectType.DEPLOYMENT,
    "authtoken.token": ObjectType.API_TOKEN,
}
# Stored as "****" and a fingerprint; the name shown drops the storage suffix.
_SECRETS = {"secret_encrypted": "secret", "key_hash": "key_hash", "key": "key"}
# Secret-bearing URLs and address lists: masked like the pages mask them for non-owners.
_MASKED = {"target", "base_url"}
# Never copied: what end users typed and got, vectors, and timestamps that change on every save.
_LEFT_OUT = {"embedding", "response", "prompt_text", "updated_at"}


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def audit_snapshot(obj: models.Model, **extra: Any) -> dict[str, Any]:
    """``obj``'s fields as JSON with secrets masked; ``extra`` adds values kept elsewhere (a rule's targets)."""
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        name = field.name
        if name in _LEFT_OUT:
            continue
        value = getattr(obj, field.attname)
        if name in _SECRETS:
            data[_SECRETS[name]] = f"**** {_fingerprint(value)}" if value else ""
        elif name in _MASKED and isinstance(value, str):
            data[name] = f"{mask(value)} {_fingerprint(value)}" if value else ""
        elif isinstance(field, models.DecimalField) and isinstance(value, Decimal) and value.is_finite():
            # As the column stores it, so a value read back and one just assigned compare equal.
            data[name] = str(value.quantize(Decimal(1).scaleb(-field.decimal_places)))
        else:
            data[field.attname if field.is_relation else name] = _json(value)
    data.update({k: _json(v) for k, v in extra.items()})
    return data


def audit_stored(obj: models.Model | None, **extra: Any) -> dict[str, Any] | None:
    """The snapshot of ``obj`` as it is stored now (None if unsaved): what an update starts from."""
    if obj is None or obj.pk is None:
        return None
    stored = type(obj)._default_manager.filter(pk=obj.pk).first()
    return None if stored is None else audit_snapshot(stored, **extra)


def _organization_id(obj: models.Model) -> int | None:
    try:
        return placement(obj).organization_id
    except (TypeError, AttributeError):  # no place in an organisation: an API token belongs to a person
        return None


def audit_record(
    *,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
) -> AuditEvent:
    """Record that the current actor did ``action`` on ``obj``.

    ``before`` is the snapshot taken before the change (None for a create); ``after`` the one after
    it (None for a delete). On an update only the fields that differ are kept.
    """
    if before is not None and after is not None:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        before = {k: before.get(k) for k in changed}
        after = {k: after.get(k) for k in changed}
    actor = current_actor()
    event = AuditEvent(
        actor=actor.user,
        actor_label=actor.label[:200],
        surface=actor.surface,
        organization_id=_organization_id(obj),
        action=action,
        object_type=object_type or _TYPES[obj._meta.label_lower],
        object_id=(object_id or str(obj.pk))[:64],
        object_repr=(object_repr or str(obj))[:200],
        diff={"before": before, "after": after},
    )
    # The actor and organisation were just read from live rows: no need to look them up again.
    event.full_clean(exclude=["actor", "organization"])
    event.save()
    return event


def audit_saved(*, obj: models.Model, before: dict[str, Any] | None, after: dict[str, Any] | None = None) -> AuditEvent:
    """Record a create (``before`` is None: the row is new) or an update of ``obj``, just saved."""
    return audit_record(
        action=AuditAction.CREATE if before is None else AuditAction.UPDATE,
        obj=obj,
        before=before,
        after=audit_snapshot(obj) if after is None else after,
    )
