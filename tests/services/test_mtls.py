"""ETSI 014 over HTTPS with SAE client certificates: gunicorn as `make run` starts it, real TLS handshakes,
and curl as the off-the-shelf client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from portal.runstack import etsi_https_command
from services import pki, registry

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def https_portal(transactional_db, backend_twin, tmp_path):
    """The portal's HTTPS listener on the test database (committed data: transactional tests)."""
    registry.register_twin(backend_twin.endpoints)
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        db_url = f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}"
    else:
        pytest.skip("the HTTPS listener test shares the database with a server process: PostgreSQL")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "QKD_AUTO_REGISTER_TWIN": "false",
           "QXAAS_VAR_DIR": str(settings.VAR_DIR), "DJANGO_SETTINGS_MODULE": "portal.settings.base"}
    log = tmp_path / "gunicorn.log"
    cmd = etsi_https_command(port, workers=1)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/healthz", verify=str(pki.pki_dir() / "ca.crt"), timeout=1)
            break
        except requests.RequestException:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def write_bundle(tmp_path: Path, name: str, bundle: dict) -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.write_text(bundle["certificate"])
    key.write_text(bundle["private_key"])
    key.chmod(0o600)
    return str(cert), str(key)


def curl(*args: str) -> tuple[int, dict]:
    result = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(body) if body.strip() else {}


def test_curl_with_the_sae_bundle_gets_keys_and_the_peer_gets_the_same(https_portal, make_lab, tmp_path):
    lab = make_lab("upm")
    lab.add_sae("upm-cait-2", "CAIT")
    ca = str(tmp_path / "ca.pem")
    Path(ca).write_text(lab.bundles["upm-cait"]["ca_chain"])
    master_cert, master_key = write_bundle(tmp_path, "master", lab.bundles["upm-cait"])
    slave_cert, slave_key = write_bundle(tmp_path, "slave", lab.bundles["upm-rect"])
    other_cert, other_key = write_bundle(tmp_path, "other", lab.bundles["upm-cait-2"])

    code, container = curl("--cacert", ca, "--cert", master_cert, "--key", master_key,
                           "-H", "Content-Type: application/json", "-d", '{"number": 1, "size": 256}',
                           f"{https_portal}/api/v1/keys/upm-rect/enc_keys")
    assert code == 200, container
    key = container["keys"][0]
    # another SAE's certificate is refused the key
    code, refused = curl("--cacert", ca, "--cert", other_cert, "--key", other_key,
                         f"{https_portal}/api/v1/keys/upm-cait/dec_keys?key_ID={key['key_ID']}")
    assert code == 400 and "message" in refused
    # the slave's certificate gets the same key (GET form, as many ETSI clients use)
    code, peer = curl("--cacert", ca, "--cert", slave_cert, "--key", slave_key,
                      f"{https_portal}/api/v1/keys/upm-cait/dec_keys?key_ID={key['key_ID']}")
    assert code == 200 and peer["keys"][0]["key"] == key["key"]
    # no certificate at all: 401 in the ETSI format
    code, body = curl("--cacert", ca, f"{https_portal}/api/v1/keys/upm-rect/status")
    assert code == 401 and "message" in body


def test_retired_and_foreign_certificates_are_refused(https_portal, make_lab, tmp_path):
    lab = make_lab("upm")
    ca = str(tmp_path / "ca.pem")
    Path(ca).write_text(lab.bundles["upm-cait"]["ca_chain"])
    old_cert, old_key = write_bundle(tmp_path, "old", lab.bundles["upm-cait"])
    lab.client.post(f"/api/saes/{lab.bundles['upm-cait']['id']}/certificate/")  # rotate: the old one retires
    code, _ = curl("--cacert", ca, "--cert", old_cert, "--key", old_key, f"{https_portal}/api/v1/keys/upm-rect/status")
    assert code == 401
    # a certificate from another CA (the twin's SAE certificate) fails the TLS handshake or gets 401
    twin_cert, twin_key = twin_portal_certificate()
    result = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca, "--cert",
                             twin_cert, "--key", twin_key, f"{https_portal}/api/v1/keys/upm-rect/status"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 or result.stdout == "401"


def twin_portal_certificate() -> tuple[str, str]:
    from services.models import QkdNode

    node = QkdNode.objects.get(node_id="CAIT")
    return node.client_cert_path, node.client_key_path


def test_a_suspended_tenants_sae_certificate_is_refused(https_portal, make_lab, tmp_path):
    lab = make_lab("upm")
    ca = str(tmp_path / "ca.pem")
    Path(ca).write_text(lab.bundles["upm-cait"]["ca_chain"])
    cert, key = write_bundle(tmp_path, "master", lab.bundles["upm-cait"])
    code, _ = curl("--cacert", ca, "--cert", cert, "--key", key, f"{https_portal}/api/v1/keys/upm-rect/status")
    assert code == 200
    lab.tenant.status = "suspended"
    lab.tenant.save(update_fields=["status"])
    code, body = curl("--cacert", ca, "--cert", cert, "--key", key, f"{https_portal}/api/v1/keys/upm-rect/status")
    assert code == 403 and "suspended" in body["message"]
