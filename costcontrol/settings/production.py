"""Production: every secret and service URL must come from the environment."""

from __future__ import annotations

from costcontrol.env import env_str

# The embedded servers are a development convenience; production names its own.
env_str("DATABASE_URL")
env_str("REDIS_URL")

from costcontrol.settings.base import *  # noqa: E402,F403

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
FIELD_ENCRYPTION_KEY = env_str("COSTCONTROL_ENCRYPTION_KEY")
DEBUG = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
STORAGES["staticfiles"]["BACKEND"] = "whitenoise.storage.CompressedManifestStaticFilesStorage"  # noqa: F405
