"""``services.authentication`` in-process (no PostgreSQL, no listener processes): the client certificate the TLS
front verified, the key gateway's caller (``etsi_caller``), the SAE principal. Written from the survivors of
`make mutate MODULE=services/authentication.py` (docs/testing.md); test_mtls.py covers the same through the real
HTTPS listener on PostgreSQL.

The TLS socket gunicorn hands Django (``gunicorn.socket``) cannot exist in-process: a stand-in with the same
``getpeercert`` contract as ``ssl.SSLSocket`` plays it here (DER bytes with ``binary_form=True``, a dict
without; empty when no certificate was verified)."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rest_framework.exceptions import NotAuthenticated
from rest_framework.test import APIClient

from portal.errors import BadRequest, Forbidden
from services.authentication import SaePrincipal, etsi_caller, make_voucher
from services.models import Sae
from tenants.tokens import issue_token


class TlsSocket:
    """What ``ssl.SSLSocket.getpeercert`` returns for a verified client certificate (or raises)."""

    def __init__(self, der: bytes | None = None, error: Exception | None = None) -> None:
        self.der, self.error = der, error

    def getpeercert(self, binary_form: bool = False):
        if self.error is not None:
            raise self.error
        if binary_form:
            return self.der
        return {"subject": ((("commonName", "x"),),)} if self.der else {}


@pytest.fixture
def lab(make_lab):
    return make_lab("authn")


def der_of(lab, name: str) -> bytes:
    pem = lab.bundles[name]["certificate"].encode()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def status(sock: TlsSocket | None = None, **headers):
    meta = dict(headers)
    if sock is not None:
        meta["gunicorn.socket"] = sock
    return APIClient().get("/api/v1/keys/authn-rect/status", **meta)


def test_the_verified_client_certificate_is_the_sae_without_any_header(lab):
    response = status(TlsSocket(der_of(lab, "authn-cait")))
    assert response.status_code == 200, response.content
    assert response.json()["master_SAE_ID"] == "authn-cait"


@pytest.mark.parametrize("sock", [TlsSocket(None), TlsSocket(b""), TlsSocket(error=ValueError("handshake not done"))],
                         ids=["no-certificate", "empty", "not-yet-handshaken"])
def test_without_a_verified_certificate_only_the_vouched_header_counts(lab, sock):
    assert status(sock).status_code == 401
    serial = Sae.objects.for_tenant(lab.tenant).get(name="authn-cait").cert_serial
    vouched = status(sock, HTTP_X_GATEWAY_CLIENT_SERIAL=serial,
                     HTTP_X_GATEWAY_VOUCHER=make_voucher(serial, "GET", "/api/v1/keys/authn-rect/status"))
    assert vouched.status_code == 200 and vouched.json()["master_SAE_ID"] == "authn-cait"


def test_the_gateways_caller_by_certificate_or_by_token(lab, member):
    cait = Sae.objects.for_tenant(lab.tenant).get(name="authn-cait")
    sae, identity = etsi_caller(cait.cert_serial, None, None, "keys:write")
    assert (sae.pk, identity) == (cait.pk, f"user:sae:{cait.pk}")

    token, secret = issue_token(lab.owner, lab.tenant, "gw", ["keys:write"])
    sae, identity = etsi_caller(None, f"Bearer {secret}", "authn-cait", "keys:write")
    assert (sae.pk, identity) == (cait.pk, f"token:{token.key}")
    sae, _ = etsi_caller("0badc0de", f"Bearer {secret}", "authn-rect", "keys:write")  # an unknown certificate
    assert sae.name == "authn-rect"

    with pytest.raises(NotAuthenticated):
        etsi_caller(None, None, "authn-cait", "keys:write")
    with pytest.raises(NotAuthenticated):
        etsi_caller("0badc0de", None, "authn-cait", "keys:write")
    with pytest.raises(Forbidden, match="keys:read"):
        etsi_caller(None, f"Bearer {secret}", "authn-cait", "keys:read")
    with pytest.raises(BadRequest, match="X-SAE-ID"):
        etsi_caller(None, f"Bearer {secret}", "", "keys:write")
    with pytest.raises(BadRequest, match="X-SAE-ID"):
        etsi_caller(None, f"Bearer {secret}", None, "keys:write")


def test_an_sae_principal_is_an_active_non_staff_user_that_cannot_be_altered(lab):
    sae = Sae.objects.for_tenant(lab.tenant).get(name="authn-cait")
    principal = SaePrincipal(sae)
    assert (principal.is_authenticated, principal.is_active, principal.is_staff) == (True, True, False)
    assert principal.scopes == {"keys:read", "keys:write"} and principal.pk == f"sae:{sae.pk}"
    assert principal.bound_tenant == lab.tenant
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.is_staff = True  # type: ignore[misc]
