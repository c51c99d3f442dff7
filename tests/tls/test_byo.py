"""Bring your own TLS stack: each endpoint of a session gets the current PSK identity from the portal and its
copy of the key through ETSI 014 ``dec_keys``, with a credential scoped to that endpoint of that session (its
own SAE certificate, presented as the key gateway vouches for it), then runs its own TLS 1.3 PSK stack:
OpenSSL ``s_server``/``s_client`` and, when Python 3.13 is there, ``tls/byo/psk_endpoint.py``. Real twin."""

from __future__ import annotations

import base64
import glob
import os
import subprocess
import time
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from services import pki
from services.authentication import make_voucher
from tls.endpoints import free_port

PY313 = sorted(glob.glob("/root/.pyenv/versions/3.13*/bin/python")) or sorted(glob.glob("/usr/bin/python3.13"))


class GatewayClient(APIClient):
    """Requests authenticated by a certificate's serial, as the key gateway forwards a verified one: each with a
    voucher of its own for its method and target."""

    def __init__(self, serial: str) -> None:
        super().__init__()
        self.serial = serial

    def get(self, path, data=None, follow=False, **extra):
        assert data is None, "put the query in the path: the voucher covers the target as sent"
        voucher = make_voucher(self.serial, "GET", path)
        return super().get(path, follow=follow, HTTP_X_GATEWAY_CLIENT_SERIAL=self.serial,
                           HTTP_X_GATEWAY_VOUCHER=voucher, **extra)


def as_endpoint(credential: dict) -> APIClient:
    """A client authenticated by the endpoint's certificate, as the key gateway forwards a verified one."""
    return GatewayClient(pki.serial_of(credential["certificate"].encode()))


def fetch_psk(client: APIClient, sid: str) -> tuple[str, bytes]:
    current = client.get(f"/api/tls/sessions/{sid}/endpoint-key")
    assert current.status_code == 200, current.content
    body = current.json()
    fetched = client.get(body["dec_keys"])
    assert fetched.status_code == 200, fetched.content
    key = fetched.json()["keys"][0]
    assert key["key_ID"] == body["psk_identity"]
    return body["psk_identity"], base64.b64decode(key["key"])


def openssl_pair(identity: str, server_key: bytes, client_key: bytes) -> str:
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_3", "-nocert",
                               "-groups", "X25519", "-psk", server_key.hex(), "-psk_identity", identity,
                               "-naccept", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        out = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-groups",
                                   "X25519", "-psk", client_key.hex(), "-psk_identity", identity, "-brief"],
                                  input=b"", capture_output=True, timeout=10, check=False)
            out = (done.stdout + done.stderr).decode()
            if "connect:errno" not in out and "Connection refused" not in out:
                return out
            time.sleep(0.05)
        return out
    finally:  # stdin stays open while it serves: s_server ends its session at EOF on stdin
        server.kill()
        server.wait()
        server.stdin.close()


def test_each_endpoint_fetches_its_copy_with_its_own_credential_and_runs_its_own_tls(
        tls_lab, tls_dir, tmp_path, django_capture_on_commit_callbacks):
    lab = tls_lab
    with django_capture_on_commit_callbacks(execute=True):
        response = lab.tls.post("/api/tls/sessions", {"node_a": "CAIT", "node_b": "Rectorado", "mode": "byo"},
                                format="json")
    assert response.status_code == 202, response.content
    created = response.json()
    sid = created["id"]
    assert response.headers["Cache-Control"] == "no-store"
    credentials = {c["endpoint"]: c for c in created["endpoint_credentials"]}
    session = lab.tls.get(f"/api/tls/sessions/{sid}").json()
    assert session["state"] == "active" and "endpoint_credentials" not in session  # shown once
    assert session["client_endpoint"] is None and not Path(tls_dir, sid).exists()  # nothing managed runs

    a, b = as_endpoint(credentials["a"]), as_endpoint(credentials["b"])
    identity_a, key_a = fetch_psk(a, sid)
    identity_b, key_b = fetch_psk(b, sid)
    assert identity_a == identity_b == session["psk_identity"] and key_a == key_b and len(key_a) == 32
    # Each copy is delivered once, to its own endpoint: neither can fetch it again.
    again = a.get(f"/api/v1/keys/{session['master_sae']}/dec_keys?key_ID={identity_a}")
    assert again.status_code == 400

    out = openssl_pair(identity_a, key_b, key_a)
    assert "Protocol version: TLSv1.3" in out and "Server Temp Key: X25519" in out, out
    wrong = openssl_pair(identity_a, key_b, bytes(32))
    assert "Protocol version: TLSv1.3" not in wrong

    # A rotation: both endpoints pick up the new identity and key the same way.
    rotated = lab.tls.post(f"/api/tls/sessions/{sid}/rotate").json()
    new_a, new_key_a = fetch_psk(a, sid)
    new_b, new_key_b = fetch_psk(b, sid)
    assert new_a == new_b == rotated["psk_identity"] != identity_a and new_key_a == new_key_b != key_a

    if PY313:  # Python 3.13's ssl PSK callbacks, the docs' third stack
        for name, key in (("a.key", new_key_a), ("b.key", new_key_b)):
            fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, key.hex().encode())
            os.close(fd)
        port = free_port()
        script = str(Path(__file__).resolve().parents[2] / "tls" / "byo" / "psk_endpoint.py")
        server = subprocess.Popen([PY313[-1], script, "server", "--listen", f"127.0.0.1:{port}", "--identity",
                                   new_b, "--psk-file", str(tmp_path / "b.key")], stdout=subprocess.PIPE)
        try:
            assert server.stdout.readline().strip() == b"listening"
            client = subprocess.run([PY313[-1], script, "client", "--connect", f"127.0.0.1:{port}", "--identity",
                                     new_a, "--psk-file", str(tmp_path / "a.key")], capture_output=True, timeout=20,
                                    check=False)
            assert b"ok: hello over QKD-keyed TLS 1.3" in client.stdout and b"protocol TLSv1.3" in client.stdout, \
                client.stderr
        finally:
            server.kill()
            server.wait()

    # Another tenant's or another session's credential learns nothing; after close the credentials are dead.
    assert lab.tls.post(f"/api/tls/sessions/{sid}/close").json()["state"] == "closed"
    assert a.get(f"/api/tls/sessions/{sid}/endpoint-key").status_code in (401, 403)


@pytest.mark.allow_skip_in_ci
def test_python313_is_where_the_docs_say():
    if not PY313:
        pytest.skip("Python 3.13 is not installed here (pyenv); its stack is covered where it is")
