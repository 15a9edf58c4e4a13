"""How the API authenticates and throttles people: tokens that expire, scopes, and per-user rate limits."""

from __future__ import annotations

import datetime as dt
from typing import Any

from axes.helpers import get_client_ip_address
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework import permissions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied, Throttled
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


# A client's wrong tokens are counted in windows of this many seconds.
TOKEN_GUESS_WINDOW_SECONDS = 60


class _TokenGuesses:
    """Wrong API tokens per client address, in Redis through Django's cache (the login throttle's idea,
    for tokens). Past ``API_TOKEN_FAILURES_PER_MINUTE`` the address gets 429 for the rest of the window
    for any token, right or wrong, so guessing learns nothing; the address is resolved as django-axes
    resolves it for logins (``AXES_IPWARE_PROXY_COUNT``)."""

    def __init__(self, request: Request) -> None:
        window = int(timezone.now().timestamp()) // TOKEN_GUESS_WINDOW_SECONDS
        address = get_client_ip_address(request._request) or "unknown"  # noqa: SLF001 (the HttpRequest)
        self.key = f"api-token-guesses:{address}:{window}"
        self.retry_after = TOKEN_GUESS_WINDOW_SECONDS - int(timezone.now().timestamp()) % TOKEN_GUESS_WINDOW_SECONDS

    def check(self) -> None:
        if int(cache.get(self.key) or 0) >= settings.API_TOKEN_FAILURES_PER_MINUTE:
            raise Throttled(self.retry_after, "Too many wrong API tokens from this address; try again later.")

    def failed(self) -> None:
        try:
            cache.incr(self.key)
        except ValueError:  # the window's first failure
            cache.add(self.key, 1, TOKEN_GUESS_WINDOW_SECONDS + 1)


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing expired tokens (401) and writes with a read token (403).

    The scope is checked here rather than in a permission class so that no view, whatever
    permissions it lists, can let a read token write. Wrong tokens are counted per address and
    answered 429 past a limit (``_TokenGuesses``).
    """

    def authenticate(self, request: Request) -> tuple[Any, Token] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.lower().startswith(self.keyword.lower()):
            return None  # no token: session authentication's turn; nothing to count
        guesses = _TokenGuesses(request)
        guesses.check()
        try:
            found = super().authenticate(request)
        except AuthenticationFailed:
            guesses.failed()
            raise
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
