"""ETSI 014 over HTTPS with SAE client certificates: the key gateway as `make run` starts it, real TLS
handshakes, and curl as the off-the-shelf client."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from services import registry
from services.models import Sae
from tests.services import listener


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
    assert code == 401 and refused["message"] == "key not issued for the calling SAE"
    # the GET form takes one key_ID: a repeated one is refused, not silently the last (the key stays)
    code, repeated = curl("--cacert", ca, "--cert", slave_cert, "--key", slave_key,
                          f"{https_portal}/api/v1/keys/upm-cait/dec_keys?key_ID={uuid.uuid4()}&key_ID={key['key_ID']}")
    assert code == 400 and "one key_ID" in repeated["message"]
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
    # The TLS layer refuses a certificate of another CA: the connection ends with no HTTP response at all (curl 35
    # handshake failed, 52 empty reply or 56 receive failure, depending on when TLS 1.3 delivers the alert), never
    # an answer; a connection refused (7) or a timeout (28) would be the listener's failure, not a refusal.
    assert result.returncode in (35, 52, 56) and result.stdout == "000", (result.returncode, result.stderr)


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
    assert code == 401 and "suspended" in body["message"]


def test_the_sae_certificate_works_on_paths_the_gateway_forwards_and_cannot_be_forged_at_the_web_listener(
        https_and_web, make_lab, tmp_path):
    """ETSI 004 is served by Django behind the gateway: the gateway vouches for the verified certificate. The
    same headers sent straight to the web listener, without the portal's secret, authenticate nobody."""
    base, web = https_and_web
    lab = make_lab("upm")
    ca = str(tmp_path / "ca.pem")
    Path(ca).write_text(lab.bundles["upm-cait"]["ca_chain"])
    cert, key = write_bundle(tmp_path, "master", lab.bundles["upm-cait"])
    body = json.dumps({"source": "sae://upm-cait", "destination": "sae://upm-rect",
                       "QoS": {"Key_chunk_size": 32, "Max_bps": 8192, "Min_bps": 256, "TTL": 60}})
    code, opened = curl("--cacert", ca, "--cert", cert, "--key", key, "-H", "Content-Type: application/json",
                        "-d", body, f"{base}/api/etsi004/open_connect")
    assert code == 200 and opened["status"] == 1 and opened["Key_stream_ID"], opened
    # a client's own X-Gateway-* headers do not get through the gateway either: no certificate, no SAE
    serial = Sae.objects.for_tenant(lab.tenant).get(name="upm-cait").cert_serial
    code, _ = curl("--cacert", ca, "-H", "Content-Type: application/json", "-H", f"X-Gateway-Client-Serial: {serial}",
                   "-H", "X-Gateway-Secret: guess", "-H", "X-Gateway-Voucher: guess", "-d", body,
                   f"{base}/api/etsi004/open_connect")
    assert code == 401
    for header in ("X-Gateway-Secret: guess", "X-Gateway-Voucher: guess", "X-Gateway-Voucher: "):
        code, _ = curl("-H", "Content-Type: application/json", "-H", f"X-Gateway-Client-Serial: {serial}",
                       "-H", header, "-d", body, f"{web}/api/etsi004/open_connect")
        assert code == 401


def test_the_operator_can_give_the_gateway_its_own_server_certificate(transactional_db, backend_twin, make_lab,
                                                                      tmp_path):
    """ETSI_TLS_CERT/KEY: clients verify the operator's certificate; SAEs still authenticate with the portal's."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms.operator.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "operator.crt", tmp_path / "operator.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    registry.register_twin(backend_twin.endpoints)
    with listener.https_portal(tmp_path, verify=str(cert_path), ETSI_TLS_CERT=str(cert_path),
                               ETSI_TLS_KEY=str(key_path)) as (base, _web, _log):
        lab = make_lab("upm")
        sae_cert, sae_key = write_bundle(tmp_path, "master", lab.bundles["upm-cait"])
        code, status = curl("--cacert", str(cert_path), "--cert", sae_cert, "--key", sae_key,
                            f"{base}/api/v1/keys/upm-rect/status")
        assert code == 200 and status["slave_SAE_ID"] == "upm-rect"
        portal_ca = tmp_path / "portal-ca.pem"
        portal_ca.write_text(lab.bundles["upm-cait"]["ca_chain"])
        result = subprocess.run(["curl", "-sS", "--cacert", str(portal_ca), f"{base}/api/v1/keys/upm-rect/status"],
                                capture_output=True, text=True, timeout=30)
        # the portal CA no longer vouches for the listener (the operator's does): curl's 60, peer not verified
        assert result.returncode == 60, (result.returncode, result.stderr)
