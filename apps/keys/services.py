"""Issuing and revoking API keys."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction

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
    return IssuedKey(api_key=api_key, plaintext=plaintext)


def key_revoke(*, api_key: ApiKey) -> ApiKey:
    api_key.revoke()
    return api_key
