"""Certificates of the IPsec gateways, from the portal CA.

IKE authenticates the gateways with certificates: the portal's PKI (``services.pki``, its directory and file
rules) holds an RSA root "QXaaS IPsec gateway CA" next to the portal CA, and issues one RSA certificate per gateway
(subjectAltName: its address, the IKE identity). A separate RSA root because Debian's default strongSwan plugins
(gmp) verify RSA signatures only: the portal CA's ECDSA P-256 signature needs the openssl plugin
(``libstrongswan-standard-plugins``), and charon checks the chain up to a self-signed anchor. Private keys stay
in files (mode 0600) under ``<VAR_DIR>/pki/ipsec`` and enter charon over VICI only.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from services import pki

RSA_BITS = 3072
DAYS = 825
_lock = threading.Lock()


@dataclass(frozen=True)
class GatewayCredentials:
    ca_pem: str      # the IPsec gateway CA (charon's trust anchor)
    cert_pem: str    # this gateway's certificate
    key_pem: str     # this gateway's private key (goes to charon only)


def _dir() -> Path:
    path = pki.pki_dir() / "ipsec"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QXaaS"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def gateway_ca() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The RSA root of gateway certificates (created on first use)."""
    d = _dir()
    cert_path, key_path = d / "gateway-ca.crt", d / "gateway-ca.key"
    with _lock:
        if not cert_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            now = dt.datetime.now(dt.UTC)
            cert = (x509.CertificateBuilder().subject_name(_name("QXaaS IPsec gateway CA"))
                    .issuer_name(_name("QXaaS IPsec gateway CA")).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .sign(key, hashes.SHA256()))
            pki._write_private(key_path, _pem_key(key))
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return _load_pair(str(cert_path), str(key_path), cert_path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _load_pair(cert_path: str, key_path: str, _mtime: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Our own files, parsed once per process (checking an RSA-3072 key costs ~0.1-1 s of CPU each time)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None,
                                             unsafe_skip_rsa_key_validation=True)
    return cert, key  # type: ignore[return-value]


def gateway_credentials(address: str) -> GatewayCredentials:
    """The certificate and key of the gateway at ``address`` (issued once, then read from its files)."""
    ca_cert, ca_key = gateway_ca()
    d = _dir()
    slug = address.replace(":", "_")
    cert_path, key_path = d / f"gw-{slug}.crt", d / f"gw-{slug}.key"
    with _lock:
        if not cert_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            now = dt.datetime.now(dt.UTC)
            cert = (x509.CertificateBuilder().subject_name(_name(f"ipsec-gateway {address}"))
                    .issuer_name(ca_cert.subject).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=DAYS))
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                                   critical=False)
                    .sign(ca_key, hashes.SHA256()))
            pki._write_private(key_path, _pem_key(key))
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return GatewayCredentials(ca_cert.public_bytes(serialization.Encoding.PEM).decode(), cert_path.read_text(),
                              key_path.read_text())


def tunnel_identity(order_uuid: object, node_id: str) -> str:
    """The IKE identity of one side of one tunnel (an FQDN). One per tunnel: a responder with many tunnels to the
    same peer gateway picks the tunnel's connection (and so its PPK) by the identities in IKE_AUTH."""
    return f"{node_id.lower()}.{order_uuid}.tunnel.qxaas"


def tunnel_certificate(address: str, identity: str) -> str:
    """A certificate for ``identity`` (dNSName) on the gateway's own key (no key generation: one signature)."""
    ca_cert, ca_key = gateway_ca()
    gateway_credentials(address)
    slug = address.replace(":", "_")
    cert_path = _dir() / f"gw-{slug}.crt"
    _, key = _load_pair(str(cert_path), str(_dir() / f"gw-{slug}.key"), cert_path.stat().st_mtime_ns)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(identity))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()
