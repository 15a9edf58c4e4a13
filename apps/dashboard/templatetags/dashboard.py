"""Formatting for money, rates, durations and key states, and the organisations shown in the top nav."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.contrib.auth.models import AnonymousUser, User

from apps.core import money
from apps.keys.api import key_status as _key_status
from apps.keys.models import ApiKey
from apps.ledger.models import UNKNOWN_LABEL
from apps.tenancy.models import Organization
from apps.tenancy.permissions import Action, can_anywhere
from apps.tenancy.selectors import organizations_for

register = template.Library()


@register.filter
def usd(value: Decimal | None, places: int = money.DEFAULT_PLACES) -> str:
    """Dollars with a fixed number of decimals: the one money formatter (apps/core/money.py)."""
    return money.usd(value, places)


@register.filter
def saving_tone(value: Decimal | None) -> str:
    """The class a saving is drawn with: "good" (green) when it saved money, "bad" when the savings
    measure cost money (a cascade's escalated cheap calls, a dearer fallback), nothing at zero."""
    amount = Decimal(value or 0)
    return "good" if amount > 0 else "bad" if amount < 0 else ""


@register.filter
def or_unknown(value: str | None) -> str:
    """The value, or the one label every page uses for a value the ledger does not know."""
    return value or UNKNOWN_LABEL


@register.filter
def key_status(api_key: ApiKey) -> str:
    return _key_status(api_key)


@register.simple_tag
def nav_organizations(user: User | AnonymousUser) -> list[Organization]:
    return list(organizations_for(user=user))


@register.simple_tag
def may_read_audit(user: User | AnonymousUser) -> bool:
    return can_anywhere(user, Action.AUDIT_VIEW)


@register.filter
def pct(value: float | None, places: int = 1) -> str:
    """A fraction as a percentage; "—" when there is nothing to divide."""
    return "—" if value is None else f"{value * 100:.{int(places)}f}%"


@register.filter
def ms(value: float | None) -> str:
    """Milliseconds, rounded; "—" when unknown."""
    return "—" if value is None else f"{value:,.0f} ms"
