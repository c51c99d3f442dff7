"""Production settings: secrets must come from the environment (fail fast), HTTPS everywhere."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import _key_id_secrets, _versioned, env

SECRET_KEY = env.str("SECRET_KEY")  # no default: refuse to start without a real secret
# No default either: rotating it must be a deliberate operator action.
API_TOKEN_PEPPERS = _versioned(env.str("API_TOKEN_PEPPERS"), "API_TOKEN_PEPPERS")
# Key-ID secrets: required, "version:secret,..." (services.keyids). The sealing (highest) version must not be
# SECRET_KEY; an older version may be, for a while, to open the IDs an earlier release sealed with it.
KEY_ID_SECRETS = _key_id_secrets(env.str("KEY_ID_SECRETS"))
if KEY_ID_SECRETS[max(KEY_ID_SECRETS)] == SECRET_KEY:
    raise ImproperlyConfigured("KEY_ID_SECRETS: the newest version seals new key IDs and must not reuse SECRET_KEY")
DEBUG = False
QXAAS_REQUIRE_STAFF_MFA = True  # not switchable by the environment here: staff always sign in with TOTP
QXAAS_PRODUCTION = True  # demo-only shortcuts (tenants.demo: the demo operator's pre-enrolled TOTP) are refused
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Scrapers and health checks talk plain HTTP to the listener on the host itself (nginx keeps these paths in).
SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
