"""Issuing and revoking API keys."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_snapshot
from apps.core.apikeys import KEY_PREFIX, LOOKUP_ID_LENGTH, hash_key
from apps.keys.models import ApiKey
from apps.tenancy.models import Project

_LOOKUP_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no look-alikes (l/1, o/0)


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def key_issue(
    *,
    project: Project,
    name: str,
    created_by: User | None = None,
    allowed_models: list[str] | None = None,
    default_feature: str = "",
    expires_at: dt.datetime | None = None,
) -> IssuedKey:
    """Create a key for ``project``; the plaintext is returned once and only here."""
    while True:
        lookup_id = "".join(secrets.choice(_LOOKUP_ALPHABET) for _ in range(LOOKUP_ID_LENGTH))
        if not ApiKey.objects.filter(lookup_id=lookup_id).exists():
            break
    plaintext = f"{KEY_PREFIX}{lookup_id}{secrets.token_urlsafe(30)}"
    api_key = ApiKey(
        project=project,
        name=name,
        lookup_id=lookup_id,
        key_hash=hash_key(plaintext),
        allowed_models=sorted(set(allowed_models or [])),
        default_feature=default_feature,
        expires_at=expires_at,
        created_by=created_by,
    )
    api_key.full_clean()
    with transaction.atomic():
        api_key.save()
        audit_record(action=AuditAction.CREATE, obj=api_key, after=audit_snapshot(api_key))
    return IssuedKey(api_key=api_key, plaintext=plaintext)


@transaction.atomic
def key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        before = audit_snapshot(api_key)
        api_key.revoke()
        audit_record(action=AuditAction.REVOKE, obj=api_key, before=before, after=audit_snapshot(api_key))
    return api_key


MAX_ROTATION_GRACE = dt.timedelta(days=7)


@transaction.atomic
def key_rotate(*, api_key: ApiKey, created_by: User | None = None, grace: dt.timedelta | None = None) -> IssuedKey:
    """Issue a new key with ``api_key``'s settings; the old one is revoked now, or expires after ``grace``.

    A grace period (at most ``MAX_ROTATION_GRACE``) lets apps move to the new key without an outage;
    an old key that would expire sooner anyway keeps its earlier expiry.
    """
    if not api_key.is_active:
        raise ValidationError("Only an active key can be rotated; issue a new one instead.")
    if grace is not None and not dt.timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise ValidationError({"grace_seconds": f"From 0 to {int(MAX_ROTATION_GRACE.total_seconds())} seconds."})
    issued = key_issue(
        project=api_key.project,
        name=api_key.name,
        created_by=created_by,
        allowed_models=list(api_key.allowed_models),
        default_feature=api_key.default_feature,
        expires_at=api_key.expires_at,
    )
    before = audit_snapshot(api_key)
    if grace:
        ends = timezone.now() + grace
        if api_key.expires_at is None or api_key.expires_at > ends:
            api_key.expires_at = ends
            api_key.save(update_fields=["expires_at"])
    else:
        api_key.revoke()
    after = audit_snapshot(api_key, replaced_by=issued.api_key.lookup_id)
    audit_record(action=AuditAction.ROTATE, obj=api_key, before=before, after=after)
    return issued
