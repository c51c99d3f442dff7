"""The portal's own CA: client certificates for tenants' SAEs and the server certificate of the ETSI
014 HTTPS listener. Private keys live in files under ``QXAAS_VAR_DIR/pki`` (mode 0600), never in the database;
an SAE's private key is generated, handed out once in its bundle, and forgotten.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

SAE_CERT_DAYS = 365
_lock = threading.Lock()


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: str
    key_pem: str
    serial_hex: str
    fingerprint_sha256: str
    not_after: dt.datetime


def pki_dir() -> Path:
    path = Path(settings.VAR_DIR) / "pki"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@contextmanager
def _creating() -> Iterator[None]:
    """Held while the CA is created: a thread lock for this process and a file lock across processes (the web
    server's workers, Celery and ``make run``'s set-up may all start on a fresh machine at once)."""
    with _lock, open(pki_dir() / ".ca.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _create_ca(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QXaaS"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "QXaaS portal CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    tmp = cert_path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_path)  # last and atomic: once the certificate exists, the key beside it is complete


def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The portal CA, created on first use, once across threads and processes."""
    d = pki_dir()
    cert_path, key_path = d / "ca.crt", d / "ca.key"
    if not cert_path.exists():
        with _creating():
            if not cert_path.exists():  # another process may have made it while we waited
                _create_ca(cert_path, key_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return cert, key  # type: ignore[return-value]


def ca_pem() -> str:
    ca()
    return (pki_dir() / "ca.crt").read_text()


def _issue(common_name: str, usage: x509.ObjectIdentifier, days: int,
           san: list[x509.GeneralName] | None = None, unit: str | None = None) -> IssuedCertificate:
    ca_cert, ca_key = ca()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QXaaS")]
    if unit:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*subject, x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCertificate(
        cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode(), format(cert.serial_number, "x"),
        cert.fingerprint(hashes.SHA256()).hex(), cert.not_valid_after_utc,
    )


CN_MAX = 64  # X.509 upper bound of a common name (RFC 5280 ub-common-name)


def issue_sae_certificate(tenant_slug: str, sae_name: str) -> IssuedCertificate:
    """A client certificate whose CN names the SAE (``<tenant>/<sae>``, or the SAE's name alone when that would
    not fit in 64 characters); the tenant is also the OU. Only the serial identifies it: the names are for
    people reading the certificate."""
    common_name = f"{tenant_slug}/{sae_name}"
    if len(common_name) > CN_MAX:
        common_name = sae_name
    return _issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, SAE_CERT_DAYS, unit=tenant_slug[:CN_MAX])


def server_certificate() -> tuple[Path, Path]:
    """The ETSI 014 listener's certificate and key files (created once, for 127.0.0.1 and localhost)."""
    d = pki_dir()
    cert_path, key_path = d / "server.crt", d / "server.key"
    if not cert_path.exists():
        issued = _issue("localhost", ExtendedKeyUsageOID.SERVER_AUTH, 825, [
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        _write_private(key_path, issued.key_pem.encode())
        cert_path.write_text(issued.cert_pem + ca_pem())
    return cert_path, key_path


def serial_of(cert_der_or_pem: bytes) -> str:
    loader = x509.load_pem_x509_certificate if cert_der_or_pem.startswith(b"-----") else x509.load_der_x509_certificate
    return format(loader(cert_der_or_pem).serial_number, "x")
