"""QXaaS settings: everything comes from the environment, with safe embedded defaults.

With no configuration the portal runs on SQLite and an embedded Celery transport under ``./var/``.
Set ``DATABASE_URL`` / ``REDIS_URL`` to run on PostgreSQL and Redis (see README, "Configuration").
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from portal.logs import logging_config
from portal.version import VERSION as QXAAS_VERSION  # from the package metadata

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("QXAAS_VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
# Secrets, the SQLite database, the CA and the twin's key stores live here: the owner's only, whatever the umask.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
os.chmod(VAR_DIR, 0o700)


def _persistent_secret(name: str, nbytes: int = 48) -> str:
    """A random secret generated once and kept under VAR_DIR (embedded default only).

    Written whole to a temporary file and linked into place (``link`` fails if the name exists), so a crash
    leaves no half-written file and of processes starting together the first one wins and all read its value.
    An empty file (left by an older version's crash) is refused, never used as a key."""
    path = VAR_DIR / name
    if not path.exists():
        tmp = VAR_DIR / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                os.link(tmp, path)
        finally:
            tmp.unlink()
    value = path.read_text().strip()
    if not value:
        raise ImproperlyConfigured(f"{path} is empty; delete it to generate a new secret (tokens hashed or "
                                   f"sessions signed with the old one stop working) or set it in the environment")
    return value


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="") or _persistent_secret("secret_key")


def _versioned(value: str, name: str) -> dict[int, str]:
    """``"id:secret,id:secret"`` as {id: secret}; empty secrets refused."""
    try:
        parsed = {int(k): v for k, v in (item.split(":", 1) for item in value.split(",") if item)}
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be 'id:secret,id:secret' with integer ids") from None
    if not parsed or not all(parsed.values()):
        raise ImproperlyConfigured(f"{name} needs 'id:secret' pairs with non-empty secrets")
    return parsed


def _key_id_secrets(value: str) -> dict[int, str]:
    """KEY_ID_SECRETS: versioned, versions >= 0 that differ modulo 16 (a key ID carries its version mod 16)."""
    parsed = _versioned(value, "KEY_ID_SECRETS")
    if min(parsed) < 0 or len({v % 16 for v in parsed}) != len(parsed):
        raise ImproperlyConfigured("KEY_ID_SECRETS versions must be >= 0 and differ modulo 16 (at most 16 listed)")
    return parsed


# Seal the key IDs tenants see (services.keyids): "version:secret,..."; new IDs carry and use the highest version,
# older versions are kept to open the IDs handed out before a rotation. A secret of its own, not SECRET_KEY: the
# embedded default generates one and keeps SECRET_KEY as version 0 only so IDs sealed by earlier releases (which
# used SECRET_KEY) still open. KEY_ID_SECRET (one secret, earlier releases) is still read, as version 1.
_key_id_env = env.str("KEY_ID_SECRETS", default="") or (
    f"1:{env.str('KEY_ID_SECRET')}" if env.str("KEY_ID_SECRET", default="") else "")
KEY_ID_SECRETS = (_key_id_secrets(_key_id_env) if _key_id_env
                  else {0: SECRET_KEY, 1: _persistent_secret("key_id_secret")})
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Shows /readyz's per-dependency detail to its bearer (monitoring, operators while the database is down).
HEALTH_TOKEN = env.str("HEALTH_TOKEN", default="") or _persistent_secret("health-token", 24)

# API token peppers: "id:secret,id:secret"; new tokens use the highest id, old ones keep verifying
# with the pepper they were hashed with, so a pepper can be rotated without invalidating tokens.
_peppers = env.str("API_TOKEN_PEPPERS", default="") or f"1:{_persistent_secret('token_pepper')}"
API_TOKEN_PEPPERS = _versioned(_peppers, "API_TOKEN_PEPPERS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "portal",
    "tenants",
    "services",
    "qrng",
    "ipsec",
    "tls",
    "billing",
]

MIDDLEWARE = [
    "portal.logs.RequestContextMiddleware",  # request ID in logs, the X-Request-ID header and error bodies
    "portal.metrics.MetricsMiddleware",  # HTTP requests and latency by URL pattern (/metrics)
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "tenants.audit.AuditContextMiddleware",  # who acts, for the audit log the services write
    "portal.middleware.RequireStaffMFAMiddleware",
    "portal.middleware.RateLimitHeadersMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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
                "portal.context_processors.portal",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'qxaas.sqlite3'}"
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
_db = DATABASES["default"]
if _db["ENGINE"].endswith("postgresql"):
    _db["HOST"] = unquote(_db.get("HOST", ""))  # allow a socket directory: postgres://u@%2Ftmp%2Fpg/db
    _db["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
    # Server-side parameters and prepared statements: psycopg prepares a statement the fifth time it runs on a
    # connection, so the hot key-delivery queries skip PostgreSQL's planner (0.4 of a 0.7 ms look-up on the
    # benchmark machine). Off behind a transaction-mode pooler such as PgBouncer < 1.21, which cannot keep
    # prepared statements.
    if env.bool("DATABASE_SERVER_SIDE_BINDING", default=True):
        _db.setdefault("OPTIONS", {}).update({"server_side_binding": True, "prepare_threshold": 5})
elif _db["ENGINE"].endswith("sqlite3"):
    if _db["NAME"] and _db["NAME"] != ":memory:":  # create it 0600 before SQLite does with its default 0644
        os.close(os.open(_db["NAME"], os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(_db["NAME"], 0o600)
    # IMMEDIATE write transactions serialise writers, which is what keeps quota checks exact on SQLite.
    _db.setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, Celery ---------------------------------------------------------------------------
# Redis is a trust boundary (docs/operations.md): AUTH/ACL in the URL (redis://user:password@host:6379/0), TLS with
# rediss:// (the CA, a client certificate and key in the query: ?ssl_ca_certs=/etc/qxaas/redis-ca.pem&
# ssl_certfile=...&ssl_keyfile=...; certificates are verified unless the URL says ssl_cert_reqs=none), or a unix
# socket (unix://user:password@/run/redis/redis.sock?db=0). One URL serves the cache, the rate limits, the
# entropy pool and, by default, the Celery broker.
REDIS_URL = env.str("REDIS_URL", default="")
# The key gateway caches SAE certificate identities, invalidated through Redis on any change (services.identities).
KEY_GATEWAY_IDENTITY_CACHE = env.bool("KEY_GATEWAY_IDENTITY_CACHE", default=True)
if REDIS_URL:
    CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"serializer": "portal.cache.JSONSerializer"},  # never pickle what Redis hands back
        "VERSION": 2,  # the keys of the JSON era: values pickled by earlier releases are never read
    }}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def _kombu_redis_url(url: str) -> str:
    """The broker URL for a Redis URL: kombu spells a unix socket ``redis+socket://`` (db as virtual_host)."""
    if not url.startswith("unix://"):
        return url
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.netloc}{parts.path}?virtual_host={db}"


def _verified_tls(url: str | None) -> dict | None:
    """kombu and Celery's Redis result backend take a rediss:// URL without ssl_* query parameters as "TLS without
    certificate checks"; the portal verifies unless the URL itself says otherwise."""
    if not url or not url.startswith("rediss://") or "ssl_" in urlsplit(url).query:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}

CELERY_DATA_DIR = VAR_DIR / "celery"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or _kombu_redis_url(REDIS_URL) or "filesystem://"
CELERY_BROKER_USE_SSL = _verified_tls(CELERY_BROKER_URL)
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Embedded default: kombu's filesystem transport, a real broker with no server to install.
    for sub in ("queue", "processed", "control"):
        (CELERY_DATA_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_DATA_DIR / "queue"),
        "processed_folder": str(CELERY_DATA_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(CELERY_DATA_DIR / "control"),  # kombu's default is ./control in the cwd
    }
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_REDIS_BACKEND_USE_SSL = _verified_tls(CELERY_RESULT_BACKEND)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# JSON logs: the worker keeps the portal's handlers instead of installing Celery's plain-text ones.
CELERY_WORKER_HIJACK_ROOT_LOGGER = env.str("LOG_FORMAT", default="plain").lower() != "json"
# Reliability (docs/reliability.md): a task is acknowledged when it has finished, not when it starts, so a
# worker that dies mid-task (kill -9, OOM, a lost host) leaves it to be delivered again: at once when only a pool
# process died (reject_on_worker_lost), after the visibility timeout when the whole worker died (Redis keeps
# unacknowledged messages aside until then). The timeout must exceed the hard time limit, or a task still
# running would be delivered a second time. Every task must therefore be safe to run twice
# (portal.reliability.durable_task documents the pattern).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a dead worker holds back at most one waiting message per process
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # a broker restart is waited out, never fatal to the worker
TASK_VISIBILITY_TIMEOUT_S = env.int("CELERY_VISIBILITY_TIMEOUT_S", default=CELERY_TASK_TIME_LIMIT + 60)
if not CELERY_BROKER_URL.startswith("filesystem://"):
    # Redis: abandoned messages are looked for every 10 s (kombu's default: every 100 s).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": TASK_VISIBILITY_TIMEOUT_S,
                                       "unacked_restore_interval": 10, "unacked_restore_throttle": 1}
# Quality reports draw up to 16 MiB and run a statistical battery for seconds to minutes: their own queue, served
# by their own worker (make run: "worker-quality"; deploy/systemd: qxaas-worker-quality.service), so they never
# hold up the default queue's provisioning, key-stream filling and order expiry.
CELERY_TASK_DEFAULT_QUEUE = "celery"
QRNG_QUALITY_QUEUE = "quality"
CELERY_TASK_ROUTES = {"qrng.tasks.run_quality_report": {"queue": QRNG_QUALITY_QUEUE}}
METRICS_CELERY_QUEUES = [CELERY_TASK_DEFAULT_QUEUE, QRNG_QUALITY_QUEUE]  # queue depths on /metrics
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "expire-api-tokens": {"task": "tenants.tasks.expire_api_tokens", "schedule": 300.0},
    "rollup-usage-hourly": {"task": "tenants.tasks.rollup_usage", "schedule": 600.0},
    "expire-quota-reservations": {"task": "tenants.tasks.expire_quota_reservations", "schedule": 60.0},
    "maintain-service-orders": {"task": "services.tasks.maintain_orders", "schedule": 2.0},
    "sample-qkd-links": {"task": "services.tasks.sample_links", "schedule": 5.0},  # link history charts
    "fill-entropy-pool": {"task": "qrng.tasks.fill_pool", "schedule": 2.0},
    # Billing: thin tasks over billing.invoices / thresholds / webhooks (each idempotent).
    "billing-close-periods": {"task": "billing.tasks.close_periods", "schedule": 600.0},
    "billing-refresh-drafts": {"task": "billing.tasks.refresh_drafts", "schedule": 300.0},
    "billing-quota-thresholds": {"task": "billing.tasks.check_quota_thresholds", "schedule": 60.0},
    "billing-retry-webhooks": {"task": "billing.tasks.retry_webhooks", "schedule": 30.0},
}

# QKD link telemetry kept for the link pages' history charts (services.linkhistory).
LINK_HISTORY_HOURS = env.int("LINK_HISTORY_HOURS", default=24)

# --- IPsec tunnels (ipsec app) -----------------------------------------------------------------------
# The shortest re-key interval a tenant may order (each re-key takes a fresh QKD key and a new IKE SA).
IPSEC_MIN_REKEY_INTERVAL_S = env.int("IPSEC_MIN_REKEY_INTERVAL_S", default=30)

# --- Auth (django-allauth with MFA) ---------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = True
ACCOUNT_ALLOW_REGISTRATION = env.bool("ACCOUNT_ALLOW_REGISTRATION", default=True)
ACCOUNT_ADAPTER = "tenants.adapters.AccountAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "QXaaS"
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="qxaas@localhost")
# Operators (staff) must have TOTP enabled; set to False only for a throwaway demo.
QXAAS_REQUIRE_STAFF_MFA = env.bool("QXAAS_REQUIRE_STAFF_MFA", default=True)

# --- REST API -------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.ratelimit.TokenRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "tenants.schema.PortalAutoSchema",  # every error status, from what each view declares
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "portal.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["portal.api.parsers.JSONWithoutNulParser"],  # NUL in a string: 400, not 500
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Per-token request rate: a token bucket (Redis when configured, otherwise per process).
API_RATE_LIMIT_PER_SECOND = env.float("API_RATE_LIMIT_PER_SECOND", default=20.0)
API_RATE_LIMIT_BURST = env.int("API_RATE_LIMIT_BURST", default=100)
# ETSI 014/004 key requests have their own bucket per credential: a 004 stream alone makes ~150 requests/s.
KEY_DELIVERY_RATE_LIMIT_PER_SECOND = env.float("KEY_DELIVERY_RATE_LIMIT_PER_SECOND", default=500.0)
KEY_DELIVERY_RATE_LIMIT_BURST = env.int("KEY_DELIVERY_RATE_LIMIT_BURST", default=1000)

SPECTACULAR_SETTINGS = {
    "TITLE": "QXaaS API",
    "DESCRIPTION": (
        "Quantum-enabled XaaS: QKD key delivery (ETSI GS QKD 014/004), QRNG entropy, quantum-keyed IPsec and "
        "TLS, tenants, quotas and metering. Authenticate with `Authorization: Bearer qx_<id>.<secret>`."
    ),
    "VERSION": QXAAS_VERSION,
    "OAS_VERSION": "3.1.0",  # for the mutualTLS security scheme of the ETSI endpoints
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Key streams and TLS sessions both have a "state" field with their own states: each its own enum.
    "ENUM_NAME_OVERRIDES": {"TlsSessionStateEnum": "tls.models.TlsSession.State"},
    "SCHEMA_PATH_PREFIX": r"/api/",
    # nullable free-form JSON is {} (which allows null), not oneOf [{}, null] (where null matches twice)
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "tenants.schema.postprocess"],
}

# --- Long requests on the web listener (docs/operations.md, "Slow clients and long requests") --------------
# A request that waits or streams holds a web worker thread; each tenant gets a few slots of each kind
# (tenants.slots), so one tenant's slow clients never take every thread. 0 = no per-tenant limit.
ETSI004_MAX_TIMEOUT_MS = env.int("ETSI004_MAX_TIMEOUT_MS", default=1000)  # longest QoS Timeout granted (<= 10 s)
ETSI004_WAITING_CALLS_PER_TENANT = env.int("ETSI004_WAITING_CALLS_PER_TENANT", default=2)
QRNG_STREAMS_PER_TENANT = env.int("QRNG_STREAMS_PER_TENANT", default=2)  # concurrent streamed entropy downloads
QRNG_STREAM_SEND_TIMEOUT_S = env.float("QRNG_STREAM_SEND_TIMEOUT_S", default=30.0)  # per chunk written to a client
QRNG_STREAM_MAX_SECONDS = env.int("QRNG_STREAM_MAX_SECONDS", default=900)  # a longer download is cut
# The key gateway's proxy to the web listener: connect, and the longest silence while reading an answer.
GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S = env.float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S", default=10.0)
GATEWAY_UPSTREAM_READ_TIMEOUT_S = env.float("GATEWAY_UPSTREAM_READ_TIMEOUT_S", default=60.0)
# ... and the longest a slow client of the gateway may take to accept one forwarded chunk.
GATEWAY_CLIENT_WRITE_TIMEOUT_S = env.float("GATEWAY_CLIENT_WRITE_TIMEOUT_S", default=30.0)

# --- SD-QKD backends -----------------------------------------------------------------------------------
# The embedded twin writes endpoints.json into its state directory; the portal registers its nodes from it.
QKD_TWIN_STATE_DIR = env.str("QKD_TWIN_STATE_DIR", default=str(VAR_DIR / "twin"))
QKD_AUTO_REGISTER_TWIN = env.bool("QKD_AUTO_REGISTER_TWIN", default=True)
# The HTTPS listener, the key gateway (services.gateway, started by make run): ETSI 014 with client certificates.
ETSI_HTTPS_PORT = env.int("ETSI_HTTPS_PORT", default=8443)
# Its server certificate and key (PEM files); unset: one issued by the portal CA for 127.0.0.1 and localhost.
# Client certificates are always verified against the portal CA, which issues the SAEs' certificates.
ETSI_TLS_CERT = env.str("ETSI_TLS_CERT", default="")
ETSI_TLS_KEY = env.str("ETSI_TLS_KEY", default="")

# --- QRNG entropy (docs/qrng.md) ---------------------------------------------------------------------
# QRNG_SOURCES: the operator's sources as a JSON list; unset = the embedded twin's QRNG, labelled simulated.
QRNG_SOURCES = env.str("QRNG_SOURCES", default="")
QRNG_TWIN_NODE = env.str("QRNG_TWIN_NODE", default="")  # twin node serving entropy (default: the first)
QRNG_MAX_REQUEST_BYTES = env.int("QRNG_MAX_REQUEST_BYTES", default=1 << 30)  # one streamed request
QRNG_POOL_TARGET_BYTES = env.int("QRNG_POOL_TARGET_BYTES", default=16 << 20)
QRNG_POOL_CHUNK_BYTES = env.int("QRNG_POOL_CHUNK_BYTES", default=1 << 20)
QRNG_POOL_KEY = env.str("QRNG_POOL_KEY", default="qxaas:qrng:pool")  # Redis key prefix of the shared pool
# A filler thread in each process keeps its local pool full, so requests are served from memory and the source
# read overlaps socket writes (without Redis; with Redis, beat fills the shared pool). bench/qrng_api.py measures both.
QRNG_POOL_FILLER_THREAD = env.bool("QRNG_POOL_FILLER_THREAD", default=True)

# --- TLS sessions (tls app, docs/tls.md) -------------------------------------------------------------
TLS_STATE_DIR = env.str("TLS_STATE_DIR", default=str(VAR_DIR / "tls"))  # private (0700): endpoint PSK files
TLS_NODES = env.json("TLS_NODES", default={})  # {"CAIT": {"netns": "swa", "address": "10.99.0.1"}}: loopback if unset
TLS_ALLOWED_TARGETS = env.list("TLS_ALLOWED_TARGETS", default=["127.0.0.0/8", "::1/128", "localhost"])
TLS_TARGET_CHECK_TIMEOUT = env.float("TLS_TARGET_CHECK_TIMEOUT", default=2.0)
TLS_MIN_ROTATE_SECONDS = env.int("TLS_MIN_ROTATE_SECONDS", default=10)
TLS_MIN_ROTATE_BYTES = env.int("TLS_MIN_ROTATE_BYTES", default=1 << 20)
TLS_GRACE_SECONDS = env.int("TLS_GRACE_SECONDS", default=30)

# --- i18n, static -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "portal" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Logging: structured enough to grep, never key material or token secrets -------------------------
# --- Billing (docs/billing.md) ---------------------------------------------------------------------
BILLING_OPERATOR = env.str("BILLING_OPERATOR", default="qxaas")          # names the gap-free number sequences
BILLING_INVOICE_PREFIX = env.str("BILLING_INVOICE_PREFIX", default="INV")
BILLING_CREDIT_NOTE_PREFIX = env.str("BILLING_CREDIT_NOTE_PREFIX", default="CN")
BILLING_GRACE_HOURS = env.int("BILLING_GRACE_HOURS", default=72)          # late usage lands in its period
BILLING_DEFAULT_TIMEZONE = env.str("BILLING_DEFAULT_TIMEZONE", default="UTC")
BILLING_DEFAULT_CURRENCY = env.str("BILLING_DEFAULT_CURRENCY", default="EUR")
BILLING_WEBHOOK_BACKOFF_SECONDS = env.int("BILLING_WEBHOOK_BACKOFF_SECONDS", default=30)
BILLING_WEBHOOK_MAX_ATTEMPTS = env.int("BILLING_WEBHOOK_MAX_ATTEMPTS", default=8)
# Tenants' webhook URLs may point at loopback/private addresses only when this is set (a lab, tests).
BILLING_WEBHOOK_ALLOW_PRIVATE = env.bool("BILLING_WEBHOOK_ALLOW_PRIVATE", default=False)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")  # "json": one JSON object per line (portal.logs)
CELERY_JOB_LOG_LEVEL = env.str("CELERY_JOB_LOG_LEVEL", default="WARNING")
LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL, {
    "django.db.backends": "WARNING",
    # Beat runs jobs every few seconds: one INFO line per job sent, received and done would bury everything
    # else. Failures still log at ERROR. CELERY_JOB_LOG_LEVEL=INFO brings them back.
    **dict.fromkeys(("celery.beat", "celery.worker.strategy", "celery.app.trace"), CELERY_JOB_LOG_LEVEL),
})

# --- Metrics (portal.metrics, docs/operations.md) ----------------------------------------------------------
# /metrics answers a Bearer METRICS_TOKEN, or direct connections from these networks (default loopback only).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"])
# Other processes' PROMETHEUS_MULTIPROC_DIR on this host (the Celery worker's) summed into /metrics.
METRICS_EXTRA_DIRS = env.list("METRICS_EXTRA_DIRS", default=[])

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
