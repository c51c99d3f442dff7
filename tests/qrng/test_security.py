"""Security hardening (issue 13) in the QRNG app: each test names the finding it guards."""

from __future__ import annotations

import pytest

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
