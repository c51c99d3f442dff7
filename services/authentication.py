"""Authentication of SAEs by their client certificate (mutual TLS).

The HTTPS listener (``make run``: https://127.0.0.1:8443) is the key gateway (``services.gateway``): it asks
for a client certificate, verifies it against the portal CA and serves ETSI 014 itself (``etsi_caller``).
Every other path it forwards to the web listener with the verified certificate's serial in
``X-Gateway-Client-Serial``, which Django believes only next to ``X-Gateway-Secret`` (a secret derived from
``SECRET_KEY`` that only the portal's own processes know), as behind nginx's ``$ssl_client_serial``. A
gunicorn TLS listener's verified certificate (``environ["gunicorn.socket"]``) is read as well. The
certificate's serial must be the SAE's current one (re-issue or revocation retires old certificates at once).
"""

from __future__ import annotations

import hashlib
import hmac
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
from .saes import cached_sae_for_certificate_serial, sae_for_certificate_serial

SERIAL_HEADER = "X-Gateway-Client-Serial"
SECRET_HEADER = "X-Gateway-Secret"  # noqa: S105 - a header name
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


@cache
def gateway_secret(secret_key: str | None = None) -> str:
    """What the key gateway sends in ``X-Gateway-Secret`` to vouch for ``X-Gateway-Client-Serial``."""
    key = (secret_key or settings.SECRET_KEY).encode()
    return hmac.new(key, b"qxaas key gateway: verified client certificate", hashlib.sha256).hexdigest()


def peer_certificate_serial(request) -> str | None:
    """The serial (hex) of the client certificate the TLS front verified, if any."""
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
    vouched = request.META.get("HTTP_X_GATEWAY_SECRET", "")
    if serial and hmac.compare_digest(vouched.encode(), gateway_secret().encode()):
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
    sae = cached_sae_for_certificate_serial(certificate_serial)  # cached, dropped on any change
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
