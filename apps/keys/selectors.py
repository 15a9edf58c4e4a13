"""Reads of API keys, scoped to the projects a person sees."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from apps.keys.models import ApiKey
from apps.tenancy.selectors import projects_for


def keys_visible(user: User | AnonymousUser) -> QuerySet[ApiKey]:
    """The keys of every project ``user`` sees."""
    return ApiKey.objects.filter(project__in=projects_for(user=user))
