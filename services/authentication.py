"""Authentication of SAEs by their client certificate (mutual TLS).

The ETSI 014 listener is gunicorn with TLS (``make run``: https://127.0.0.1:8443) that asks for a client
certificate and verifies it against the portal CA; gunicorn exposes the TLS socket to the application as
``environ["gunicorn.socket"]``, from which the verified peer certificate is read. The certificate's serial
must be the SAE's current one (re-issue or revocation retires old certificates at once).
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework.authentication import BaseAuthentication

from . import pki
from .models import Sae
from .saes import sae_for_certificate_serial


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


def peer_certificate(request) -> bytes | None:
    sock = request.META.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        return getpeercert(binary_form=True)  # only set when the TLS layer verified it against our CA
    except ValueError:
        return None


class SaeCertificateAuthentication(BaseAuthentication):
    def authenticate(self, request):
        der = peer_certificate(request)
        if not der:
            return None
        sae = sae_for_certificate_serial(pki.serial_of(der))
        if sae is None:
            return None  # a valid but retired certificate: treated as no credentials (401)
        return SaePrincipal(sae), sae

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="qxaas", mTLS'


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
