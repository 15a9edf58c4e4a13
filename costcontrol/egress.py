"""The egress policy with this install's allow-list (``COSTCONTROL_EGRESS_ALLOW``), for both planes.

The rule itself is in ``apps.core.egress``; this module only binds it to settings and turns its
refusals into form/API errors at save time.
"""

from __future__ import annotations

from functools import cache

import httpx2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

from apps.core.egress import EgressPolicy, EgressRefused
from apps.core.egress_http import egress_client


@cache
def _policy(allow: tuple[str, ...]) -> EgressPolicy:
    try:
        return EgressPolicy(allow)
    except ValueError as exc:
        raise ImproperlyConfigured(f"COSTCONTROL_EGRESS_ALLOW: {exc}") from None


def egress_policy() -> EgressPolicy:
    """The policy for the current settings (tests override the allow-list per test)."""
    return _policy(tuple(settings.COSTCONTROL_EGRESS_ALLOW))


def egress_check(url: str) -> None:
    """Save-time check of a tenant-set URL (resolves its host): a ``ValidationError`` saying why not."""
    try:
        egress_policy().check_url(url)
    except EgressRefused as exc:
        raise ValidationError(f"This URL cannot be used: {exc}.", code="egress_refused") from None


def egress_http_client(*, timeout: float) -> httpx2.Client:
    """A sync HTTP client for tenant-set URLs (connects only to checked addresses, never redirects)."""
    return egress_client(egress_policy(), timeout=timeout)
