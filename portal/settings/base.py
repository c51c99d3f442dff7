"""QXaaS settings: everything comes from the environment, with safe embedded defaults.

With no configuration the portal runs on SQLite and an embedded Celery transport under ``./var/``.
Set ``DATABASE_URL`` / ``REDIS_URL`` to run on PostgreSQL and Redis (see README, "Configuration").
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import unquote

import environ

from portal.version import VERSION as QXAAS_VERSION  # from the package metadata

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("QXAAS_VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret(name: str, nbytes: int = 48) -> str:
    """A random secret generated once and kept under VAR_DIR (embedded default only)."""
    path = VAR_DIR / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="") or _persistent_secret("secret_key")
# Seals the key IDs tenants see (services.keyids); changing it makes the key IDs handed out before unknown.
KEY_ID_SECRET = env.str("KEY_ID_SECRET", default="") or SECRET_KEY
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# API token peppers: "id:secret,id:secret"; new tokens use the highest id, old ones keep verifying
# with the pepper they were hashed with, so a pepper can be rotated without invalidating tokens.
_peppers = env.str("API_TOKEN_PEPPERS", default="") or f"1:{_persistent_secret('token_pepper')}"
API_TOKEN_PEPPERS = {int(k): v for k, v in (item.split(":", 1) for item in _peppers.split(",") if item)}

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
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
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
    # IMMEDIATE write transactions serialise writers, which is what keeps quota checks exact on SQLite.
    _db.setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, Celery ---------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_DATA_DIR = VAR_DIR / "celery"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "filesystem://"
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
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "expire-api-tokens": {"task": "tenants.tasks.expire_api_tokens", "schedule": 300.0},
    "rollup-usage-hourly": {"task": "tenants.tasks.rollup_usage", "schedule": 600.0},
    "maintain-service-orders": {"task": "services.tasks.maintain_orders", "schedule": 2.0},
    "fill-entropy-pool": {"task": "qrng.tasks.fill_pool", "schedule": 2.0},
}

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
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "portal.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
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
    "SCHEMA_PATH_PREFIX": r"/api/",
}

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
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
CELERY_JOB_LOG_LEVEL = env.str("CELERY_JOB_LOG_LEVEL", default="WARNING")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Beat runs jobs every few seconds: one INFO line per job sent, received and done would bury everything
        # else. Failures still log at ERROR. CELERY_JOB_LOG_LEVEL=INFO brings them back.
        **{name: {"level": CELERY_JOB_LOG_LEVEL}
           for name in ("celery.beat", "celery.worker.strategy", "celery.app.trace")},
    },
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
