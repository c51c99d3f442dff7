"""Bad input and unavailable keys: a clear error with the right status, no slot or key bits spent, nothing left
running (real twin, real stunnel, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.models import QkdNode
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides
from tls.endpoints import free_port
from tls.models import TlsSession

from .conftest import stunnel_pids


def used(tenant, key: str) -> int:
    return next(q.used for q in quota.quota_states(tenant) if q.quota_key == key)


def nothing_left(lab, tls_dir) -> None:
    assert stunnel_pids(tls_dir) == []
    assert not Path(tls_dir).exists() or list(Path(tls_dir).iterdir()) == []
    assert used(lab.tenant, "tls_sessions") == 0


@pytest.mark.parametrize(("body", "message"), [
    ({"node_a": "Atlantis", "node_b": "Rectorado"}, "unknown QKD node"),
    ({"node_a": "CAIT", "node_b": "CAIT"}, "must be different nodes"),
    ({"node_a": "CAIT", "node_b": "Rectorado", "target": "no-port"}, "host:port"),
    ({"node_a": "CAIT", "node_b": "Rectorado", "target": "192.0.2.1:80"}, "not one the operator allows"),
    ({"node_a": "CAIT", "node_b": "Rectorado", "rotate_seconds": 1}, "rotate_seconds must be between"),
    ({"node_a": "CAIT", "node_b": "Rectorado", "rotate_bytes": 10}, "rotate_bytes must be between"),
    ({"node_a": "CAIT", "node_b": "Rectorado", "key_size": 100}, "key_size must be one of"),
    ({"node_a": "CAIT", "node_b": "Rectorado", "mode": "magic"}, "mode must be one of"),
])
def test_bad_requests_are_refused_before_anything_is_placed(tls_lab, target, tls_dir, body, message,
                                                            django_capture_on_commit_callbacks):
    body = {"target": f"127.0.0.1:{target}", **body}
    with django_capture_on_commit_callbacks(execute=True):
        response = tls_lab.tls.post("/api/tls/sessions", body, format="json")
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]["message"]
    assert not TlsSession.objects.for_tenant(tls_lab.tenant).exists()
    nothing_left(tls_lab, tls_dir)


def test_an_unreachable_target_is_refused(tls_lab, tls_dir, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = tls_lab.tls.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado",
                                                          "target": f"127.0.0.1:{free_port()}"}, format="json")
    assert response.status_code == 400 and "unreachable" in response.json()["error"]["message"]
    assert not TlsSession.objects.for_tenant(tls_lab.tenant).exists()
    nothing_left(tls_lab, tls_dir)


def test_scopes_are_enforced(tls_lab, client_for, target):
    reader = client_for(tls_lab.owner, tls_lab.tenant, ["tls:read"])
    response = reader.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado",
                                                 "target": f"127.0.0.1:{target}"}, format="json")
    assert response.status_code == 403 and "tls:write" in response.json()["error"]["message"]
    assert client_for(tls_lab.owner, tls_lab.tenant, ["keys:read"]).get("/api/tls/sessions").status_code == 403


def test_too_many_sessions_is_429_with_quota_headers_and_nothing_started(tls_lab, target, tls_dir):
    body = {"node_a": "CAIT", "node_b": "Rectorado", "target": f"127.0.0.1:{target}"}
    # The plan allows 2 concurrent sessions; provisioning is not run (no on_commit here), so none starts.
    ids = [tls_lab.tls.post("/api/tls/sessions", body, format="json").json()["id"] for _ in range(2)]
    third = tls_lab.tls.post("/api/tls/sessions", body, format="json")
    assert third.status_code == 429, third.content
    assert third.json()["error"]["code"] == "quota_exceeded"
    assert "RateLimit-Policy" in third.headers and "RateLimit" in third.headers
    assert TlsSession.objects.for_tenant(tls_lab.tenant).count() == 2
    for sid in ids:
        assert tls_lab.tls.post(f"/api/tls/sessions/{sid}/close").json()["state"] == "closed"
    nothing_left(tls_lab, tls_dir)


def test_no_qkd_key_fails_the_session_with_the_reason_nothing_running_slot_released(
        tls_lab, target, tls_dir, django_capture_on_commit_callbacks):
    # A real outage: node CAIT's KME is at an address where nothing listens (rolled back after the test).
    QkdNode.objects.filter(node_id="CAIT").update(kme_url=f"https://127.0.0.1:{free_port()}")
    with django_capture_on_commit_callbacks(execute=True):
        response = tls_lab.tls.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado",
                                                          "target": f"127.0.0.1:{target}"}, format="json")
    assert response.status_code == 202
    session = tls_lab.tls.get(f"/api/tls/sessions/{response.json()['id']}").json()
    assert session["state"] == "failed" and "no QKD key" in session["reason"] and "CAIT" in session["reason"]
    assert not UsageRecord.objects.for_tenant(tls_lab.tenant).filter(meter="qkd_key_bits").exists()
    nothing_left(tls_lab, tls_dir)


def test_key_quota_exhausted_fails_the_session_with_the_reason(tls_lab, target, tls_dir,
                                                               django_capture_on_commit_callbacks):
    set_quota_overrides(tls_lab.tenant, {"qkd_key_bits.day": 100})
    with django_capture_on_commit_callbacks(execute=True):
        response = tls_lab.tls.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado",
                                                          "target": f"127.0.0.1:{target}"}, format="json")
    session = tls_lab.tls.get(f"/api/tls/sessions/{response.json()['id']}").json()
    assert session["state"] == "failed" and "qkd_key_bits" in session["reason"], session
    nothing_left(tls_lab, tls_dir)
