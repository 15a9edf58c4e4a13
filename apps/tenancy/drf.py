"""The role matrix for the API: permission classes asking the same ``can`` as the pages, and related
fields whose choices are what the caller may see."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import MultipleObjectsReturned
from django.db.models import QuerySet
from rest_framework import permissions, serializers
from rest_framework.exceptions import NotAuthenticated, ValidationError
from rest_framework.request import Request

from apps.tenancy.models import Organization, Project, Team
from apps.tenancy.permissions import Action, can, can_anywhere
from apps.tenancy.selectors import organizations_for, projects_for


def writes_need(action: Action) -> type[permissions.BasePermission]:
    """Reads for whoever sees the rows (the queryset decides); writes for roles the matrix allows ``action``.

    A role allowed it nowhere gets a 403 before its body is even read; one allowed it elsewhere gets a
    403 on an object outside its reach (an object it cannot see at all is a 404 from the queryset).
    """

    class WritesNeed(permissions.BasePermission):
        message = f"Your role does not allow {action.value} here."

        def has_permission(self, request: Request, view: Any) -> bool:
            return request.method in permissions.SAFE_METHODS or can_anywhere(request.user, action)

        def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
            return request.method in permissions.SAFE_METHODS or can(request.user, action, obj)

    WritesNeed.__name__ = f"WritesNeed[{action.value}]"
    return WritesNeed


class VisibleRelated(serializers.SlugRelatedField):
    """A related field whose choices are what the caller may see, so naming another tenant's object is an
    invalid choice (400), as on the pages: organisations, projects and teams by default, anything else
    through ``visible`` (the caller's user -> the rows they see)."""

    def __init__(self, *, visible: Callable[[Any], QuerySet[Any]] | None = None, **kwargs: Any) -> None:
        self.visible = visible
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet[Any]:
        user = self.context["request"].user
        if self.visible is not None:
            return self.visible(user)
        model = self.queryset.model
        if model is Organization:
            return organizations_for(user=user)
        if model is Project:
            return projects_for(user=user)
        if model is Team:
            return Team.objects.filter(organization__in=organizations_for(user=user))
        raise TypeError(f"say which {model.__name__} rows the caller sees: VisibleRelated(visible=...)")

    def to_internal_value(self, data: Any) -> Any:
        try:
            return super().to_internal_value(data)
        except MultipleObjectsReturned:  # a team slug used in two of the caller's organisations
            self.fail("does_not_exist", slug_name=self.slug_field, value=data)


def team_in(organization: Organization, slug: str | None, *, field: str = "team") -> Team | None:
    """The team of ``organization`` named by ``slug`` (None for none), or a 400 naming ``field``."""
    if not slug:
        return None
    team = Team.objects.filter(organization=organization, slug=slug).first()
    if team is None:
        raise ValidationError({field: f"No team “{slug}” in {organization.slug}."})
    return team


def request_user(request: Request) -> User:
    """The authenticated person behind an API request (every endpoint requires one)."""
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    return user
