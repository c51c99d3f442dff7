"""Authentication of SAEs by their client certificate (mutual TLS).

The HTTPS listener (``make run``: https://127.0.0.1:8443) is the key gateway (``services.gateway``): it asks
for a client certificate, verifies it against the portal CA and serves ETSI 014 itself (``etsi_caller``).
Every other path it forwards to the web listener with the verified certificate's serial in
``X-Gateway-Client-Serial``, which Django believes only next to a fresh ``X-Gateway-Voucher``: an HMAC, under a
key derived from ``SECRET_KEY`` that only the portal's own processes know, over the serial, the method, the
request target, a nonce and the time (``make_voucher``; 30 s either way, used once), as behind nginx's
``$ssl_client_serial``. A gunicorn TLS listener's verified certificate (``environ["gunicorn.socket"]``) is read
as well. The certificate's serial must be the SAE's current one (re-issue or revocation retires old
certificates at once).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotAuthenticated

from portal.errors import BadRequest, Forbidden
from tenants.authentication import bearer_token
from tenants.tenancy import TenantContext, resolve_tenant

from . import pki
from .models import Sae
from .saes import sae_for_certificate_serial

SERIAL_HEADER = "X-Gateway-Client-Serial"
VOUCHER_HEADER = "X-Gateway-Voucher"
SECRET_HEADER = "X-Gateway-Secret"  # noqa: S105 - the static header of earlier releases: stripped, never believed
AUTHENTICATE_HEADER = 'Bearer realm="qxaas", mTLS'


@dataclass(frozen=True)
class SaePrincipal:
    """``request.user`` for a request authenticated by an SAE certificate."""

    sae: Sae
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    scopes: frozenset[str] = frozenset({"keys:read", "keys:write"})  # the key interfaces, nothing else

    @property
    def bound_tenant(self):
        """The tenant this principal belongs to (``tenants.tenancy.resolve_tenant`` decides from it)."""
        return self.sae.tenant

    @property
    def pk(self) -> str:
        return f"sae:{self.sae.pk}"


VOUCHER_MAX_AGE = 30  # seconds either way: the gateway and the web server share a host clock
_VOUCHER_RE = re.compile(r"^(\d{1,12})\.([0-9a-f]{16})\.([0-9a-f]{64})$")

logger = logging.getLogger(__name__)


@cache
def _voucher_key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode(), b"qxaas key gateway voucher v2", hashlib.sha256).digest()


def _voucher_mac(serial: str, method: str, target: str, timestamp: str, nonce: str) -> str:
    message = "\n".join((timestamp, nonce, serial, method.upper(), target)).encode()
    return hmac.new(_voucher_key(settings.SECRET_KEY), message, hashlib.sha256).hexdigest()


def make_voucher(serial: str, method: str, target: str, now: float | None = None) -> str:
    """What the key gateway sends in ``X-Gateway-Voucher`` for a verified certificate:
    ``<unix time>.<nonce>.<HMAC>`` over the time, a random nonce, the serial, the method and the request target
    (path and query as sent), under a key derived from ``SECRET_KEY`` that only the portal's processes know. It is
    good for that one request target, for ``VOUCHER_MAX_AGE`` seconds, once (``check_voucher``)."""
    timestamp, nonce = str(int(now if now is not None else time.time())), secrets.token_hex(8)
    return f"{timestamp}.{nonce}.{_voucher_mac(serial, method, target, timestamp, nonce)}"


def check_voucher(voucher: str, serial: str, method: str, target: str, now: float | None = None) -> bool:
    """Whether ``voucher`` was made by the gateway for this serial, method and target, is fresh, and has not been
    used before. Used vouchers are remembered in the cache (Redis when configured: shared by every web process)
    until they are stale anyway; if the cache is away, a fresh bound voucher is still accepted (logged)."""
    match = _VOUCHER_RE.match(voucher)
    if match is None:
        return False
    timestamp, nonce, mac = match.groups()
    if abs((now if now is not None else time.time()) - int(timestamp)) > VOUCHER_MAX_AGE:
        return False
    if not hmac.compare_digest(mac.encode(), _voucher_mac(serial, method, target, timestamp, nonce).encode()):
        return False
    from django.core.cache import cache
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        return cache.add(f"qxaas:voucher:{mac}", 1, timeout=2 * VOUCHER_MAX_AGE + 1)  # False: a replay
    except (RedisConnectionError, RedisTimeoutError) as exc:  # Redis away: binding and freshness still hold
        logger.warning("gateway voucher accepted without its replay check (cache unavailable: %s)", exc)
        return True


def request_target(request) -> str:
    """The request target as the client sent it (gunicorn's RAW_URI), else Django's rebuilt path and query."""
    return request.META.get("RAW_URI") or request.get_full_path()


def peer_certificate_serial(request) -> str | None:
    """The serial (hex) of the client certificate the TLS front verified, if any (memoised on the request: a
    voucher is good once)."""
    django_request = getattr(request, "_request", request)
    if not hasattr(django_request, "_qxaas_peer_serial"):
        django_request._qxaas_peer_serial = _peer_certificate_serial(django_request)
    return django_request._qxaas_peer_serial


def _peer_certificate_serial(request) -> str | None:
    sock = request.META.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is not None:
        try:
            der = getpeercert(binary_form=True)  # only set when the TLS layer verified it against our CA
        except ValueError:
            der = None
        if der:
            return pki.serial_of(der)
    serial = request.META.get("HTTP_X_GATEWAY_CLIENT_SERIAL")
    voucher = request.META.get("HTTP_X_GATEWAY_VOUCHER", "")
    if serial and voucher and check_voucher(voucher, serial, request.method, request_target(request)):
        return serial
    return None


class SaeCertificateAuthentication(BaseAuthentication):
    def authenticate(self, request):
        serial = peer_certificate_serial(request)
        if not serial:
            return None
        sae = sae_for_certificate_serial(serial)
        if sae is None:
            return None  # a valid but retired certificate: treated as no credentials (401)
        return SaePrincipal(sae), sae

    def authenticate_header(self, request) -> str:
        return AUTHENTICATE_HEADER


def etsi_caller(certificate_serial: str | None, authorization: str | None, sae_name: str | None,
                scope: str) -> tuple[Sae, str]:
    """The calling SAE of an ETSI request outside DRF (the key gateway), by the same rules as ``EtsiView``:
    the SAE of a current certificate, else an API token with ``scope`` naming one of its tenant's SAEs in
    ``X-SAE-ID``; the tenant decided by ``resolve_tenant`` (a suspended one refused). Also returns the
    caller's rate-limit identity (the one ``TokenRateThrottle`` uses)."""
    sae = sae_for_certificate_serial(certificate_serial) if certificate_serial else None
    if sae is not None:
        resolve_tenant(SimpleNamespace(user=SaePrincipal(sae), auth=sae))
        return sae, f"user:{SaePrincipal(sae).pk}"
    token = bearer_token(authorization)
    if token is None:
        raise NotAuthenticated()
    ctx = resolve_tenant(SimpleNamespace(user=token.user, auth=token))
    return token_calling_sae(ctx, sae_name, scope), f"token:{token.key}"


def token_calling_sae(ctx: TenantContext, sae_name: str | None, scope: str) -> Sae:
    """The SAE an API token names in ``X-SAE-ID`` (one of its tenant's), if the token has ``scope``."""
    from .saes import tenant_sae

    if scope not in ctx.scopes:
        raise Forbidden(f"this needs the {scope!r} scope")
    if not sae_name:
        raise BadRequest("with an API token, name the calling SAE in the X-SAE-ID header")
    return tenant_sae(ctx.tenant, sae_name, "calling")


try:  # documented in the OpenAPI schema as OpenAPI 3.1's mutualTLS security scheme
    from drf_spectacular.extensions import OpenApiAuthenticationExtension

    class SaeCertificateScheme(OpenApiAuthenticationExtension):
        target_class = "services.authentication.SaeCertificateAuthentication"
        name = "saeCertificate"

        def get_security_definition(self, auto_schema):
            return {"type": "mutualTLS", "description": "the SAE's client certificate issued by the portal CA "
                    "(HTTPS listener, default https://127.0.0.1:8443)"}
except ImportError:  # pragma: no cover - drf-spectacular is a dependency
    pass
