"""Secrets at rest of providers and notification channels: re-encrypting them with the newest key
(``manage.py reencrypt_secrets``) and alerting an organisation whose secret no configured key decrypts
(``providers.check_secrets``, every 5 minutes). See ``apps.providers.crypto`` for the keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_snapshot
from apps.budgets.models import AlertKind, NotificationChannel
from apps.budgets.services import alert_raise
from apps.providers import crypto
from apps.providers.models import Provider


@dataclass(frozen=True)
class SecretRow:
    """One stored secret that no configured key decrypts."""

    kind: str  # "provider" | "channel"
    id: int
    organization_id: int
    name: str
    token: str  # the stored ciphertext


def _secret_rows() -> list[Any]:
    return [
        *Provider.objects.exclude(secret_encrypted="").only("id", "organization_id", "name", "secret_encrypted"),
        *NotificationChannel.objects.exclude(secret_encrypted="").only(
            "id", "organization_id", "name", "secret_encrypted"
        ),
    ]


def _row(obj: Any) -> SecretRow:
    kind = "provider" if isinstance(obj, Provider) else "channel"
    return SecretRow(kind, obj.id, obj.organization_id, obj.name, obj.secret_encrypted)


def secrets_reencrypt() -> tuple[int, list[SecretRow]]:
    """Re-encrypt every stored secret with the first key; returns (re-encrypted, undecryptable rows)."""
    done, failed = 0, []
    for obj in _secret_rows():
        try:
            token = crypto.reencrypt(obj.secret_encrypted)
        except crypto.InvalidToken:
            failed.append(_row(obj))
            continue
        with transaction.atomic():
            before = audit_snapshot(obj)
            stored = type(obj).objects.filter(pk=obj.pk, secret_encrypted=obj.secret_encrypted)
            if stored.update(secret_encrypted=token):
                obj.secret_encrypted = token
                audit_record(action=AuditAction.REENCRYPT, obj=obj, before=before, after=audit_snapshot(obj))
        done += 1
    return done, failed


def secrets_unreadable() -> list[SecretRow]:
    """Stored secrets that no configured key decrypts (the gateway leaves such providers out)."""
    failed = []
    for obj in _secret_rows():
        try:
            crypto.decrypt(obj.secret_encrypted)
        except crypto.InvalidToken:
            failed.append(_row(obj))
    return failed


def secrets_alert_unreadable() -> int:
    """Raise one alert per undecryptable secret (once per stored value); returns alerts raised."""
    raised = 0
    for row in secrets_unreadable():
        noun = "Provider" if row.kind == "provider" else "Channel"
        _alert, new = alert_raise(
            organization_id=row.organization_id,
            kind=AlertKind.SECRET_UNREADABLE,
            dedup_key=f"secret:{row.kind}:{row.id}:{hashlib.sha256(row.token.encode()).hexdigest()[:16]}",
            title=f"{noun} “{row.name}”: its stored secret cannot be decrypted",
            message=(
                f"None of the keys in COSTCONTROL_ENCRYPTION_KEYS decrypts the secret of {noun.lower()} “{row.name}”"
                + (", so the gateway has stopped sending requests to it." if row.kind == "provider" else ".")
                + " Enter the secret again, or put the key it was encrypted with back in the key list."
            ),
            data={"kind": row.kind, "id": row.id},
        )
        raised += int(new)
    return raised
