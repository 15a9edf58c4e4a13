"""Who is acting, and through which surface: set once per request or command, read by ``audit_record``.

A contextvar, so the services need no actor argument and no caller can forget to pass one:

- pages and the API: ``AuditContextMiddleware`` (one per request; the surface is ``api`` under
  ``/api/``, else ``ui``). The user is read from the request when an event is recorded, not when the
  request arrives: DRF authenticates API tokens inside the view and then sets the same request's
  ``user``, so a token's user is the actor exactly like a session's;
- management commands: ``@audited_command`` on ``handle``;
- anything else (Celery tasks, the GPU worker, the gateway's consumers) is ``system``.
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse

from apps.audit.models import Surface


@dataclass(frozen=True)
class Actor:
    surface: str
    user: User | None
    label: str


@dataclass(frozen=True)
class _Context:
    surface: str
    request: HttpRequest | None = None
    label: str = ""

    def actor(self) -> Actor:
        user = getattr(self.request, "user", None)
        if isinstance(user, User) and user.is_authenticated:
            return Actor(self.surface, user, user.get_username())
        return Actor(self.surface, None, self.label)


_current: ContextVar[_Context | None] = ContextVar("audit_context", default=None)
SYSTEM = Actor(Surface.SYSTEM, None, "")


def current_actor() -> Actor:
    context = _current.get()
    return SYSTEM if context is None else context.actor()


@contextmanager
def audit_context(*, surface: str, request: HttpRequest | None = None, label: str = "") -> Iterator[None]:
    """Attribute the audit events recorded inside the block to ``request``'s user (or ``label``) on ``surface``."""
    token = _current.set(_Context(surface=surface, request=request, label=label))
    try:
        yield
    finally:
        _current.reset(token)


def request_surface(request: HttpRequest) -> str:
    return Surface.API if request.path.startswith("/api/") else Surface.UI


class AuditContextMiddleware:
    """Sets the audit context for the request; works in both the sync and the async handler."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        with audit_context(surface=request_surface(request), request=request):
            response: HttpResponse = self.get_response(request)
            return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        with audit_context(surface=request_surface(request), request=request):
            response: HttpResponse = await self.get_response(request)
            return response


_Handle = TypeVar("_Handle", bound=Callable[..., Any])


def audited_command(handle: _Handle) -> _Handle:
    """Decorate a management command's ``handle``: its changes are recorded as ``command`` events,
    labelled with the command and the operating-system user who ran it."""

    @functools.wraps(handle)
    def wrapper(self: Any, *args: Any, **options: Any) -> Any:
        name = type(self).__module__.rsplit(".", 1)[-1]
        with audit_context(surface=Surface.COMMAND, label=f"manage.py {name} ({_os_user()})"):
            return handle(self, *args, **options)

    return wrapper  # type: ignore[return-value]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no LOGNAME (containers)
        return "unknown"
