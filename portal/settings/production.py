"""Production settings: secrets must come from the environment (fail fast), HTTPS everywhere."""

from .base import *  # noqa: F403
from .base import env

SECRET_KEY = env.str("SECRET_KEY")  # no default: refuse to start without a real secret
API_TOKEN_PEPPERS = {  # no default either: rotating it must be a deliberate operator action
    int(k): v for k, v in (item.split(":", 1) for item in env.str("API_TOKEN_PEPPERS").split(",") if item)
}
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
