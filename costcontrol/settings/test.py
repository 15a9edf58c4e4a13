"""Settings for `make test`: real Postgres and Redis, isolated by name.

Each test session gets its own Redis key prefix, exported to the environment
so the gateway and consumer processes the tests start share it; a run never
touches a developer's data or a parallel run's. Postgres isolation is the
`test_` database pytest-django creates.
"""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("COSTCONTROL_REDIS_PREFIX", f"cctest:{uuid.uuid4().hex[:10]}:")

from costcontrol.settings.base import *  # noqa: E402,F403

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed: tests create many users
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405  (WhiteNoise warns when it is missing)
