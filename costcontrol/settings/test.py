"""Settings for `make test`: real Postgres and Redis, isolated by name.

Each test session gets its own Redis key prefix, exported to the environment
so the gateway and consumer processes the tests start share it; a run never
touches a developer's data or a parallel run's. Postgres isolation is a
`test_costcontrol_<run>` database that pytest-django creates and drops.
"""

from __future__ import annotations

import os
import uuid

RUN_ID = os.environ.setdefault("COSTCONTROL_TEST_RUN", uuid.uuid4().hex[:10])
os.environ.setdefault("COSTCONTROL_REDIS_PREFIX", f"cctest:{RUN_ID}:")

from costcontrol.settings.base import *  # noqa: E402,F403

# A database per test run, so two runs on one machine never drop each other's.
DATABASES["default"]["TEST"] = {"NAME": f"test_costcontrol_{RUN_ID}"}  # noqa: F405

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed: tests create many users
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
COSTCONTROL_EGRESS_ALLOW = env_list("COSTCONTROL_EGRESS_ALLOW", LOOPBACK_EGRESS)  # noqa: F405

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405  (WhiteNoise warns when it is missing)

# Tasks the tests enqueue (on commit of a batch or deployment) stay under the run's prefix, so they
# are removed with its keys and never reach a developer's worker on the same Redis.
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": REDIS_PREFIX}  # noqa: F405

# Every test client comes from 127.0.0.1, and many tests send wrong API tokens on purpose (schema fuzzing,
# expiry, the role matrix): with the production limit they would lock each other out by timing. The
# throttle's own test sets a small limit.
API_TOKEN_FAILURES_PER_MINUTE = 1_000_000
