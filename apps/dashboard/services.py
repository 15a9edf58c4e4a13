"""Writes of the control-plane pages that belong to no other app: people's API tokens."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_snapshot
from apps.dashboard.models import TokenGrant, TokenScope


@transaction.atomic
def api_token_rotate(*, user: User, scope: str = TokenScope.WRITE, lifetime_days: int | None = None) -> Token:
    """Replace ``user``'s API token with a new one; the old one stops working at once.

    ``lifetime_days`` may shorten the token's life below ``API_TOKEN_LIFETIME_DAYS``, never lengthen it.
    """
    if scope not in TokenScope.values:
        raise ValidationError({"scope": f"One of: {', '.join(TokenScope.values)}."})
    limit = settings.API_TOKEN_LIFETIME_DAYS
    if lifetime_days is not None and not 1 <= lifetime_days <= limit:
        raise ValidationError({"lifetime_days": f"From 1 to {limit} days."})
    old = Token.objects.filter(user=user).first()
    before = None if old is None else audit_snapshot(old, scope=_scope_of(old))
    Token.objects.filter(user=user).delete()
    token = Token.objects.create(user=user)
    expires_at = None if lifetime_days is None else timezone.now() + dt.timedelta(days=lifetime_days)
    grant = TokenGrant(token=token, scope=scope, expires_at=expires_at)
    grant.full_clean()
    grant.save()
    after = audit_snapshot(token, scope=scope, expires_at=expires_at)
    audit_record(
        action=AuditAction.CREATE if old is None else AuditAction.ROTATE,
        obj=token,
        before=before,
        after=after,
        object_id=str(user.pk),
        object_repr=f"API token of {user.get_username()}",
    )
    return token


@transaction.atomic
def api_token_revoke(*, user: User) -> None:
    token = Token.objects.filter(user=user).first()
    if token is None:
        return
    audit_record(
        action=AuditAction.REVOKE,
        obj=token,
        before=audit_snapshot(token, scope=_scope_of(token)),
        object_id=str(user.pk),
        object_repr=f"API token of {user.get_username()}",
    )
    token.delete()


def _scope_of(token: Token) -> str:
    grant = TokenGrant.objects.filter(token=token).first()
    return TokenScope.READ if grant is None else grant.scope
