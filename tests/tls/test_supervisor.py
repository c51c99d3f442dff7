"""The supervisor after a worker restart (nothing in memory: pid files, spec.json and the database), rotation by
policy, and reconciliation: orphans stopped, a live session whose endpoints vanished re-created."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from tls import services
from tls.endpoints import PairSpec, Supervisor, free_port
from tls.models import TlsSession

from .conftest import stunnel_pids
from .test_acceptance import get


def order(lab, target, capture, **extra) -> str:
    with capture(execute=True):
        response = lab.tls.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado",
                                                      "target": f"127.0.0.1:{target}", **extra}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def test_orphan_endpoints_are_stopped_and_a_vanished_pair_is_recreated(tls_lab, target, tls_dir,
                                                                       django_capture_on_commit_callbacks):
    sid = order(tls_lab, target, django_capture_on_commit_callbacks)
    # Left over by a crash: endpoints of a session the database does not know (started by another process).
    Supervisor(tls_dir).start(PairSpec("left-over", free_port(), free_port(), "127.0.0.1", target), "k-1",
                              secrets.token_bytes(32))
    assert len(stunnel_pids(tls_dir)) == 4
    out = services.supervise()
    assert out["orphans"] == 1 and not (Path(tls_dir) / "left-over").exists()
    assert len(stunnel_pids(tls_dir)) == 2

    # The live session's endpoints and files vanish (a wiped state directory): new endpoints, on a fresh key.
    before = TlsSession.objects.for_tenant(tls_lab.tenant).get(uuid=sid)
    sup = Supervisor(tls_dir)
    sup.stop(sid)
    assert not (Path(tls_dir) / sid).exists()
    services.supervise()
    after = tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()
    assert after["state"] == "active" and after["psk_identity"] != before.key_id
    assert [r["reason"] for r in after["rotations"]] == ["initial", "restore"]
    assert get(int(after["client_endpoint"].rsplit(":", 1)[1]), "/back") == "hello from B: /back"
    tls_lab.tls.post(f"/api/tls/sessions/{sid}/close")
    assert stunnel_pids(tls_dir) == []


def test_time_policy_rotates_and_a_closing_session_left_midway_is_finished(tls_lab, target, tls_dir, settings,
                                                                           django_capture_on_commit_callbacks):
    settings.TLS_MIN_ROTATE_SECONDS = 1
    sid = order(tls_lab, target, django_capture_on_commit_callbacks, rotate_seconds=1, grace_seconds=30)
    first = tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()["psk_identity"]
    time.sleep(1.05)
    assert services.supervise()["rotated"] == 1
    session = tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()
    assert session["psk_identity"] != first and session["rotations"][-1]["reason"] == "time"
    port = int(session["client_endpoint"].rsplit(":", 1)[1])
    assert get(port, "/x") == "hello from B: /x"

    # A worker died while closing: the next pass finishes the close (processes and files gone).
    TlsSession.objects.for_tenant(tls_lab.tenant).filter(uuid=sid).update(state="closing")
    services.supervise()
    assert tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()["state"] == "closed"
    assert stunnel_pids(tls_dir) == [] and not (Path(tls_dir) / sid).exists()


def test_rotation_by_bytes_counts_the_traffic_of_finished_connections(tls_lab, target, tls_dir, settings,
                                                                      django_capture_on_commit_callbacks):
    settings.TLS_MIN_ROTATE_BYTES = 1000
    sid = order(tls_lab, target, django_capture_on_commit_callbacks, rotate_bytes=1000)
    port = int(tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()["client_endpoint"].rsplit(":", 1)[1])
    assert services.supervise()["rotated"] == 0
    for i in range(10):
        get(port, f"/{'x' * 100}{i}")
    deadline = time.monotonic() + 5
    while services.supervise()["rotated"] == 0 and time.monotonic() < deadline:  # stunnel logs the close
        time.sleep(0.05)
    session = tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()
    assert session["rotations"][-1]["reason"] == "bytes"
    tls_lab.tls.post(f"/api/tls/sessions/{sid}/close")


def test_the_page_shows_state_endpoints_and_key_ids_never_a_key(tls_lab, target, tls_dir, settings,
                                                                django_capture_on_commit_callbacks, admin_client):
    settings.QXAAS_REQUIRE_STAFF_MFA = False
    from django.test import Client

    sid = order(tls_lab, target, django_capture_on_commit_callbacks)
    session = tls_lab.tls.get(f"/api/tls/sessions/{sid}").json()
    key_hex = (Path(tls_dir) / sid / "server.psk").read_text().split(":", 1)[1].strip()
    browser = Client()
    browser.force_login(tls_lab.owner)
    listing = browser.get("/tls/").content.decode()
    assert sid[:8] in listing and session["psk_identity"] in listing
    page = browser.get(f"/tls/{sid}/").content.decode()
    assert session["psk_identity"] in page and "openssl s_client" in page and "/close" in page
    assert session["client_endpoint"].rsplit(":", 1)[1] in page and key_hex not in page
    pk = TlsSession.objects.for_tenant(tls_lab.tenant).get(uuid=sid).pk
    admin = admin_client.get(f"/admin/tls/tlssession/{pk}/change/")
    assert admin.status_code == 200, admin.status_code
    assert session["psk_identity"].encode() in admin.content and key_hex.encode() not in admin.content
    tls_lab.tls.post(f"/api/tls/sessions/{sid}/close")
