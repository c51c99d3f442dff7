"""``X-Gateway-Client-Serial`` is believed only next to the right ``X-Gateway-Secret``, in-process.

The key gateway forwards a verified client certificate's serial to Django in a header; anyone who can reach
the web listener can send that header too. These tests go through Django's test client (no PostgreSQL, no
listener processes), so a regression in ``services.authentication`` fails in every run, not only in the
PostgreSQL-only listener tests of test_mtls.py.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from services.authentication import gateway_secret
from services.models import Sae


@pytest.fixture
def victim(make_lab):
    lab = make_lab("victim")
    return lab, Sae.objects.for_tenant(lab.tenant).get(name="victim-cait").cert_serial


def as_gateway(serial: str, secret: str | None):
    headers = {"HTTP_X_GATEWAY_CLIENT_SERIAL": serial}
    if secret is not None:
        headers["HTTP_X_GATEWAY_SECRET"] = secret
    return APIClient().get("/api/v1/keys/victim-rect/status", **headers)


@pytest.mark.parametrize("secret", [None, "", "guess", gateway_secret("another-secret-key")])
def test_the_serial_header_without_the_right_secret_authenticates_nobody(victim, secret):
    _lab, serial = victim
    response = as_gateway(serial, secret)
    assert response.status_code == 401, response.content
    assert "master_SAE_ID" not in response.json() and "message" in response.json()


def test_the_serial_header_with_the_gateways_secret_is_the_sae(victim):
    _lab, serial = victim
    response = as_gateway(serial, gateway_secret())
    assert response.status_code == 200, response.content
    assert response.json()["master_SAE_ID"] == "victim-cait" and response.json()["slave_SAE_ID"] == "victim-rect"


def test_the_right_secret_does_not_revive_a_retired_certificate(victim):
    lab, serial = victim
    lab.client.post(f"/api/saes/{lab.bundles['victim-cait']['id']}/certificate/")  # re-issue: the old serial retires
    assert as_gateway(serial, gateway_secret()).status_code == 401
