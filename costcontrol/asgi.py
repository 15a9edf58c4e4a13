"""The one ASGI entry point: /v1/* goes to the data plane, the rest to Django.

Both run in the same process (`uvicorn costcontrol.asgi:application`); scale
out by adding workers or hosts. Django's own handler does not speak the
lifespan protocol, so lifespan events go to the gateway, which opens its Redis
and HTTP pools and loads the policy snapshot at start-up.
"""

from __future__ import annotations

import logging
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costcontrol.settings.dev")

django_application = get_asgi_application()

from apps.batches.uploads import capped_upload  # noqa: E402
from apps.gateway.app import Gateway  # noqa: E402  (needs Django set up first)
from apps.policy.build import load_snapshot  # noqa: E402
from costcontrol import compiled  # noqa: E402
from costcontrol.loopback import loopback_only  # noqa: E402
from costcontrol.metrics import metrics_app, with_metrics_server  # noqa: E402

# Logged here, where logging is set up: costcontrol/__init__ decided it before Django was.
logging.getLogger(__name__).info("hot path: %s", compiled.state)

# The data plane reads the policy as a snapshot built by the control plane's adapter.
gateway = Gateway(load_snapshot)

# Files and batches are uploads and polling, not the request hot path: Django serves them (apps/batches).
DJANGO_V1 = ("/v1/files", "/v1/batches")
# Liveness and readiness are the gateway process's own (readiness checks its policy snapshot).
HEALTH = ("/healthz", "/readyz")


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        await gateway(scope, receive, with_metrics_server(send))
    elif scope["type"] == "http" and scope["path"].startswith("/v1/") and not scope["path"].startswith(DJANGO_V1):
        await gateway(scope, receive, send)
    elif scope["type"] == "http" and scope["path"] in HEALTH:
        await gateway(scope, receive, send)
    elif scope["type"] == "http" and scope["path"] == "/metrics":
        await metrics_app(scope, receive, send)
    elif scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
        await capped_upload(django_application, scope, receive, send, max_file_bytes=settings.BATCH_MAX_FILE_BYTES)
    else:
        await django_application(scope, receive, send)


if settings.LOOPBACK_ONLY:  # the development settings: never served to another machine
    application = loopback_only(application)  # type: ignore[assignment]
