"""The role matrix as DRF permission classes, so API views ask the same ``can`` as the pages."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from apps.tenancy.permissions import Action, can, can_anywhere


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
