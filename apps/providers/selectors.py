"""Reads of providers, prices and aliases, scoped by organisation membership."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Prefetch, QuerySet

from apps.providers.models import ModelAlias, Price, Provider
from apps.tenancy.models import Organization, Project
from apps.tenancy.selectors import organizations_for


def providers_for(*, user: User | AnonymousUser) -> QuerySet[Provider]:
    """Providers of every organisation ``user`` belongs to."""
    return (
        Provider.objects.filter(organization__in=organizations_for(user=user).values("pk"))
        .select_related("organization")
        .order_by("organization__name", "name")
    )


def providers_with_prices(*, organization: Organization) -> QuerySet[Provider]:
    """The organisation's providers, each with its prices (newest first per model) in one extra query."""
    return (
        Provider.objects.filter(organization=organization)
        .order_by("name")
        .prefetch_related(Prefetch("prices", queryset=Price.objects.order_by("model", "-effective_from")))
    )


def prices_for(*, user: User | AnonymousUser) -> QuerySet[Price]:
    return (
        Price.objects.filter(provider__in=providers_for(user=user).values("pk"))
        .select_related("provider")
        .order_by("provider_id", "model", "-effective_from")
    )


def aliases_for(*, project: Project) -> QuerySet[ModelAlias]:
    return ModelAlias.objects.filter(project=project).select_related("provider").order_by("alias")
