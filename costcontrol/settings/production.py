"""Production: every secret and service URL must come from the environment."""

from __future__ import annotations

from costcontrol.env import MissingSetting, env_bool, env_int, env_list, env_str

# The embedded servers are a development convenience; production names its own.
env_str("DATABASE_URL")
env_str("REDIS_URL")

from costcontrol.settings.base import *  # noqa: E402,F403

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
# Django's own deploy check calls shorter or repetitive keys weak; the development key is public.
if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:  # noqa: F405
    raise MissingSetting(
        "DJANGO_SECRET_KEY must be this installation's own: at least 50 characters, not the development key "
        '(e.g. python -c "import secrets; print(secrets.token_urlsafe(50))")'
    )
# Fernet keys for secrets at rest, newest first (apps/providers/crypto.py); no derived fallback here.
if not FIELD_ENCRYPTION_KEYS:  # noqa: F405
    raise MissingSetting("environment variable COSTCONTROL_ENCRYPTION_KEYS is required (Fernet keys, newest first)")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [])
if not ALLOWED_HOSTS:
    raise MissingSetting("environment variable DJANGO_ALLOWED_HOSTS is required (comma-separated host names)")
DEBUG = False
LOOPBACK_ONLY = False

# HTTPS only: the proxy in front terminates TLS and says so in X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
# Exact origins for CSRF behind the proxy, e.g. https://costs.example.com.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# How many proxies append to X-Forwarded-For, so login throttling counts the client's address, not theirs.
AXES_IPWARE_PROXY_COUNT = env_int("AXES_IPWARE_PROXY_COUNT", 1)
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]
STORAGES["staticfiles"]["BACKEND"] = "whitenoise.storage.CompressedManifestStaticFilesStorage"  # noqa: F405
