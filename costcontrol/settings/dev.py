"""Local development and `make run`: embedded services by default; debug pages only when asked."""

from __future__ import annotations

from costcontrol.settings.base import *  # noqa: F403

# Off unless DJANGO_DEBUG=1: a demo shows the product's own 403/404/500 pages, not Django's debug pages
# (which list every URL pattern). The published SECRET_KEY must never face a network: loopback only.
DEBUG = env_bool("DJANGO_DEBUG", False)  # noqa: F405
LOOPBACK_ONLY = True
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
COSTCONTROL_EGRESS_ALLOW = env_list("COSTCONTROL_EGRESS_ALLOW", LOOPBACK_EGRESS)  # noqa: F405

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405  (WhiteNoise warns when it is missing)
