"""How the API authenticates and throttles people: tokens that expire, scopes, and per-user rate limits."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import permissions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle

from apps.dashboard.models import TokenGrant, TokenScope


def _grant(token: Token) -> TokenGrant | None:
    try:
        return token.grant  # type: ignore[no-any-return,attr-defined]
    except TokenGrant.DoesNotExist:
        return None


def token_expires_at(token: Token) -> dt.datetime:
    """``API_TOKEN_LIFETIME_DAYS`` after the token was made, or earlier if it was made to expire sooner."""
    latest = token.created + dt.timedelta(days=settings.API_TOKEN_LIFETIME_DAYS)
    grant = _grant(token)
    if grant is not None and grant.expires_at is not None:
        return min(latest, grant.expires_at)
    return latest


def token_scope(token: Token) -> str:
    """What the token may do; a token made outside the account page (Django's admin) only reads."""
    grant = _grant(token)
    return TokenScope.READ if grant is None else grant.scope


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing expired tokens (401) and writes with a read token (403).

    The scope is checked here rather than in a permission class so that no view, whatever
    permissions it lists, can let a read token write.
    """

    def authenticate(self, request: Request) -> tuple[Any, Token] | None:
        found = super().authenticate(request)
        if found is not None and request.method not in permissions.SAFE_METHODS:
            if token_scope(found[1]) != TokenScope.WRITE:
                raise PermissionDenied("This API token is read-only; make a write token at /account/token/.")
        return found

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        token = Token.objects.select_related("user", "grant").filter(key=key).first()
        if token is None:
            raise AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        if token_expires_at(token) <= timezone.now():
            raise AuthenticationFailed("This API token has expired; make a new one at /account/token/.")
        return token.user, token


class _SettingsRate:
    """Read the rate when a request comes, not when the class was imported (settings can change)."""

    scope: str

    def get_rate(self) -> str | None:
        rate: str | None = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        return rate


class UserThrottle(_SettingsRate, UserRateThrottle):
    pass
