"""Local development and `make run`: debug on, embedded services by default."""

from __future__ import annotations

from costcontrol.settings.base import *  # noqa: F403

DEBUG = env_bool("DJANGO_DEBUG", True)  # noqa: F405
# DEBUG pages and the published SECRET_KEY must never face a network: serve on loopback only.
LOOPBACK_ONLY = True
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
COSTCONTROL_EGRESS_ALLOW = env_list("COSTCONTROL_EGRESS_ALLOW", LOOPBACK_EGRESS)  # noqa: F405

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405  (WhiteNoise warns when it is missing)
