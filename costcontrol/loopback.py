"""Development settings serve loopback only: every entry point asks here before it serves.

The development settings run with ``DEBUG`` (tracebacks with settings in them) and a secret key that
is published in this repository; reachable from another machine, they would hand out sessions and
secrets. ``runserver`` and ``runstack`` refuse a non-loopback ``--host`` before starting, the ASGI
application refuses connections that arrive on another address (``uvicorn --host 0.0.0.0``), and a
Celery worker or beat refuses a broker that is not on loopback. Production settings skip all this.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets allowed); any other name or address is not.

    Asked on every request (the server's own address, one or a few per process): cached, so that
    parsing the address is not paid each time."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, *, what: str) -> None:
    """Raise ImproperlyConfigured when the development settings would serve ``what`` on ``host``."""
    if settings.LOOPBACK_ONLY and not is_loopback(host):
        raise ImproperlyConfigured(
            f"{what}: the development settings serve on loopback only, and {host!r} is not loopback "
            "(they run with DEBUG and a published SECRET_KEY). Use 127.0.0.1, or run with "
            "DJANGO_SETTINGS_MODULE=costcontrol.settings.production and its required variables."
        )


def loopback_only(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app so that connections arriving on a non-loopback address get a 403 and nothing else."""
    warned = False

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal warned
        server = scope.get("server")
        # A Unix socket has no port: it is local by nature.
        if scope["type"] in ("http", "websocket") and server and server[1] is not None and not is_loopback(server[0]):
            if not warned:
                warned = True
                log.error("Refusing connections on %s: the development settings serve on loopback only.", server[0])
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = b"The development settings serve on loopback only.\n"
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return guarded
