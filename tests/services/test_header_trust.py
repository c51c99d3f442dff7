"""``X-Gateway-Client-Serial`` is believed only next to a right ``X-Gateway-Voucher``, in-process.

The key gateway forwards a verified client certificate's serial to Django in a header; anyone who can reach
the web listener can send that header too. These tests go through Django's test client (no PostgreSQL, no
listener processes), so a regression in ``services.authentication`` fails in every run, not only in the
PostgreSQL-only listener tests of test_mtls.py.
"""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from services.authentication import make_voucher
from services.models import Sae

PATH = "/api/v1/keys/victim-rect/status"


@pytest.fixture
def victim(make_lab):
    lab = make_lab("victim")
    return lab, Sae.objects.for_tenant(lab.tenant).get(name="victim-cait").cert_serial


def as_gateway(serial: str, voucher: str | None):
    headers = {"HTTP_X_GATEWAY_CLIENT_SERIAL": serial}
    if voucher is not None:
        headers["HTTP_X_GATEWAY_VOUCHER"] = voucher
    return APIClient().get(PATH, **headers)


def _foreign_voucher(serial: str) -> str:
    with override_settings(SECRET_KEY="another-secret-key"):  # another portal's gateway
        return make_voucher(serial, "GET", PATH)


@pytest.mark.parametrize("voucher", [None, "", "guess", "1.00.00", _foreign_voucher])
def test_the_serial_header_without_the_right_voucher_authenticates_nobody(victim, voucher):
    _lab, serial = victim
    response = as_gateway(serial, voucher(serial) if callable(voucher) else voucher)
    assert response.status_code == 401, response.content
    assert "master_SAE_ID" not in response.json() and "message" in response.json()


def test_the_serial_header_with_the_gateways_voucher_is_the_sae(victim):
    _lab, serial = victim
    response = as_gateway(serial, make_voucher(serial, "GET", PATH))
    assert response.status_code == 200, response.content
    assert response.json()["master_SAE_ID"] == "victim-cait" and response.json()["slave_SAE_ID"] == "victim-rect"


def test_the_right_voucher_does_not_revive_a_retired_certificate(victim):
    lab, serial = victim
    lab.client.post(f"/api/saes/{lab.bundles['victim-cait']['id']}/certificate/")  # re-issue: the old serial retires
    assert as_gateway(serial, make_voucher(serial, "GET", PATH)).status_code == 401
