"""Issue 20's acceptance, end to end with real components: the madqci twin's KMEs (keys through
``delivery.take_key``), real stunnel endpoints, real OpenSSL ``s_client``, PostgreSQL and Redis. Nothing mocked.

Order a session through the API, send HTTP through A's port to a server behind B; s_client against B with the
wrong PSK fails and with the right one succeeds (TLSv1.3, X25519); rotations during a stream of requests fail
none and change the PSK identity; old keys are removed after the grace period; a killed endpoint is restarted
and the session is active again; close leaves no process and no secret file; the ledger holds the session's
seconds and the key bits of every key, with the order id."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from tenants import quota
from tenants.models import UsageRecord
from tls import services
from tls.models import TlsRotation, TlsSession

from .conftest import stunnel_pids


def get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def s_client(port: int, identity: str, key_hex: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-psk", key_hex,
                           "-psk_identity", identity, "-brief"], input=b"", capture_output=True, timeout=15,
                          check=False)


def psk_lines(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def test_a_managed_session_from_order_to_close(tls_lab, target, tls_dir, django_capture_on_commit_callbacks):
    lab = tls_lab
    with django_capture_on_commit_callbacks(execute=True):
        response = lab.tls.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado",
                                                      "target": f"127.0.0.1:{target}", "grace_seconds": 1},
                                format="json")
    assert response.status_code == 202, response.content
    sid = response.json()["id"]
    session = lab.tls.get(f"/api/tls/sessions/{sid}").json()
    assert session["state"] == "active", session
    first_identity = session["psk_identity"]
    assert [r["key_id"] for r in session["rotations"]] == [first_identity]
    client_port = int(session["client_endpoint"].rsplit(":", 1)[1])
    server_port = int(session["server_endpoint"].rsplit(":", 1)[1])

    # Plaintext into A, quantum-keyed TLS 1.3 from A to B, plaintext to the target.
    assert get(client_port, "/first") == "hello from B: /first"

    # The secrets: a private directory, PSK files 0600, nothing in the processes' arguments or environment.
    home = Path(tls_dir) / sid
    assert os.stat(tls_dir).st_mode & 0o777 == 0o700 and os.stat(home).st_mode & 0o777 == 0o700
    key_hex = psk_lines(home / "server.psk")[first_identity]
    for name in ("server.psk", "client.psk"):
        assert os.stat(home / name).st_mode & 0o777 == 0o600
    pids = stunnel_pids(tls_dir)
    assert len(pids) == 2
    for pid in pids:
        assert key_hex.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert key_hex.encode() not in Path(f"/proc/{pid}/environ").read_bytes()

    # OpenSSL against B's endpoint: the wrong PSK fails, the right one gives TLS 1.3 with X25519.
    wrong = s_client(server_port, first_identity, "00" * 32)
    assert b"Protocol version: TLSv1.3" not in wrong.stdout + wrong.stderr and wrong.returncode != 0
    right = s_client(server_port, first_identity, key_hex)
    out = (right.stdout + right.stderr).decode()
    assert "Protocol version: TLSv1.3" in out and "Server Temp Key: X25519" in out, out

    # Two rotations during a stream of requests: none fails, the identity changes each time.
    failures, done, stop = [], [0], threading.Event()

    def stream() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                assert get(client_port, f"/n{done[0]}") == f"hello from B: /n{done[0]}"
                done[0] += 1
            except Exception as exc:  # every failure counts, whatever its kind
                failures.append(repr(exc))

    worker = threading.Thread(target=stream)
    worker.start()
    identities = [first_identity]
    try:
        for _ in range(2):
            time.sleep(0.3)
            rotated = lab.tls.post(f"/api/tls/sessions/{sid}/rotate")
            assert rotated.status_code == 200, rotated.content
            identities.append(rotated.json()["psk_identity"])
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(timeout=35)
    assert failures == [] and done[0] > 10, (failures[:3], done[0])
    assert len(set(identities)) == 3
    assert get(client_port, "/after") == "hello from B: /after"
    # The server still accepts the old identities during the grace period; then the supervisor removes them.
    assert set(psk_lines(home / "server.psk")) == set(identities)
    assert set(psk_lines(home / "client.psk")) == {identities[-1]}
    time.sleep(1.1)
    services.supervise()
    assert set(psk_lines(home / "server.psk")) == {identities[-1]}
    assert get(client_port, "/newest") == "hello from B: /newest"  # B knows only the newest key now
    retired = TlsRotation.objects.filter(session__uuid=sid, retired_at__isnull=False).values_list("key_id", flat=True)
    assert set(retired) == set(identities[:2])
    old = s_client(server_port, first_identity, key_hex)  # the first key no longer opens B
    assert b"Protocol version: TLSv1.3" not in old.stdout + old.stderr and old.returncode != 0

    # A crashed endpoint is restarted by the supervisor and the session is active again.
    server_pid = int((home / "server.pid").read_text())
    os.kill(server_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{server_pid}/cmdline").exists() and Path(f"/proc/{server_pid}/cmdline").read_bytes() \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    out = services.supervise()
    assert out["restarted"] == 1
    session = lab.tls.get(f"/api/tls/sessions/{sid}").json()
    assert session["state"] == "active" and session["restarts"] == 1
    assert int((home / "server.pid").read_text()) != server_pid
    assert get(client_port, "/restarted") == "hello from B: /restarted"

    # Close: no process, no secret file, the slot back.
    closed = lab.tls.post(f"/api/tls/sessions/{sid}/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    assert stunnel_pids(tls_dir) == [] and not home.exists()
    assert lab.tls.post(f"/api/tls/sessions/{sid}/close").status_code == 409

    # The ledger: the session's seconds, exactly, and 256 bits for each of its three keys, with the order id.
    row = TlsSession.objects.for_tenant(lab.tenant).get(uuid=sid)
    ledger = UsageRecord.objects.for_tenant(lab.tenant).filter(order_id=row.uuid)
    seconds = sum(ledger.filter(meter="tls_session_seconds").values_list("quantity", flat=True))
    assert seconds == math.floor(row.closed_at.timestamp()) - math.floor(row.activated_at.timestamp())
    assert sorted(ledger.filter(meter="qkd_key_bits").values_list("quantity", flat=True)) == [256, 256, 256]
    assert next(q.used for q in quota.quota_states(lab.tenant) if q.quota_key == "tls_sessions") == 0
