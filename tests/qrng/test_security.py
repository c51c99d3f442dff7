"""Security hardening (issue 13) in the QRNG app: each test names the finding it guards."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


# --- 7. drawing entropy answers API tokens only, never a browser's cookie -------------------------------------------

def test_entropy_gets_refuse_session_authentication(make_entropy_lab, use_sources, random_file):
    from django.test import Client

    lab = make_entropy_lab("lab")
    path, _ = random_file()
    use_sources([{"name": "disk", "kind": "device", "path": path}])
    browser = Client()
    browser.force_login(lab.owner)
    for url in ("/api/entropy?format=hex&bytes=16", "/api/entropy/anu?length=4&type=uint8",
                "/api/entropy/anu/API/jsonI.php?length=4&type=uint8"):
        response = browser.get(url)
        assert response.status_code == 401, (url, response.content)
    assert lab.ledger() == []
    assert browser.get("/api/entropy/capabilities").status_code == 200  # read-only: the session may look
    assert lab.get("/api/entropy?format=hex&bytes=16").status_code == 200


# --- 11. appliance URLs, credentials and device paths are for operators only -----------------------------------------

def test_capabilities_and_errors_show_tenants_no_urls_credentials_or_paths(make_entropy_lab, use_sources, random_file,
                                                                           appliance, make_user):
    lab = make_entropy_lab("lab")
    path, _ = random_file()
    creds_url = appliance.replace("http://", "http://qrnguser:s3cret-pw@")
    use_sources([
        {"name": "disk", "kind": "device", "path": path},
        {"name": "box", "kind": "http", "url_template": creds_url + "/forbidden?bytes={bytes}", "attempts": 1},
    ])
    lab.get("/api/entropy?format=hex&bytes=16&source=box")  # makes box fail: its last_error names its host
    port = appliance.rsplit(":", 1)[1]
    for url in ("/api/entropy/capabilities", "/api/entropy?format=hex&bytes=16&source=box"):
        text = lab.get(url).content.decode()
        assert "s3cret-pw" not in text and "qrnguser" not in text, url
        assert path not in text and f"127.0.0.1:{port}" not in text, url
    capabilities = lab.get("/api/entropy/capabilities").json()
    assert {s["name"] for s in capabilities["sources"]} == {"disk", "box"}  # names and health stay visible

    operator = make_user("op", staff=True)
    op = APIClient()
    op.force_authenticate(operator)  # an operator's session
    text = op.get("/api/entropy/capabilities?tenant=lab").content.decode()
    assert path in text and f"127.0.0.1:{port}" in text  # operators see where sources are…
    assert "s3cret-pw" not in text  # …but never a password
