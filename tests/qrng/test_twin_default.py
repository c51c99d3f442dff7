"""The portal's default QRNG path against the real twin: nothing configured, the twin's endpoints.json found,
its entropy endpoint read over mutual TLS with the portal's certificate, every answer labelled simulated, and
the ledger charging exactly the bytes the tenant was served."""

from __future__ import annotations

import base64

import pytest

from qrng import runtime


@pytest.fixture
def lab(make_entropy_lab):
    return make_entropy_lab("twinlab")


@pytest.fixture
def default_path(use_sources, settings, qrng_twin):
    """Nothing configured: the portal finds the running twin through its state directory."""
    settings.QRNG_SOURCES = ""
    settings.QKD_TWIN_STATE_DIR = qrng_twin["state_dir"]
    runtime.reset_service()
    return qrng_twin


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def assert_simulated(response) -> None:
    assert response.status_code == 200, response.content[:300]
    assert response["X-Entropy-Simulated"] == "true" and response["X-Entropy-Source-Kind"] == "twin"


def test_the_default_path_serves_the_twins_qrng_labelled_simulated_and_charges_what_it_served(lab, default_path):
    raw = lab.get("/api/entropy?format=raw&bytes=65536")
    assert_simulated(raw)
    served = len(body_of(raw))
    assert served == 65536 and lab.charged() == 65536  # the ledger is the bytes served, nothing more or less
    hexed = lab.get("/api/entropy?format=hex&bytes=1000")
    assert_simulated(hexed)
    served += len(bytes.fromhex(hexed.json()["data"]))
    b64 = lab.get("/api/entropy?format=base64&bytes=333")
    assert_simulated(b64)
    served += len(base64.b64decode(b64.json()["data"]))
    assert served == 65536 + 1000 + 333 and lab.charged() == served
    assert [r.quantity for r in lab.ledger()] == [65536, 1000, 333]
    body = hexed.json()
    assert body["provenance"]["simulated"] is True and "not quantum" in body["provenance"]["notice"]
    source = runtime.get_service().sources.get("twin")
    assert source.kind == "twin" and source.simulated


def test_capabilities_and_the_entropy_page_say_simulated(lab, default_path):
    from django.test import Client

    capabilities = lab.get("/api/entropy/capabilities")
    assert capabilities["X-Entropy-Simulated"] == "true"
    body = capabilities.json()
    assert body["state"] == "available" and body["any_simulated"] is True
    assert [(s["name"], s["simulated"]) for s in body["sources"]] == [("twin", True)]
    browser = Client()
    browser.force_login(lab.owner)
    html = browser.get("/entropy/").content.decode()
    assert '<code>twin</code> <span class="tag">simulated</span>' in html and "Simulated source" in html
    assert "not quantum" in html


def test_a_refused_request_is_charged_nothing(lab, default_path):
    assert lab.get("/api/entropy?format=raw&bytes=0").status_code == 400
    assert lab.get("/api/entropy?format=int&min=6&max=1").status_code == 400
    assert lab.ledger() == []
