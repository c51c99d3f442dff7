"""The twin's PKI: one CA, a server certificate per KME, client certificates per SAE, per node (node-to-node
relay) and for the portal (CN ``qxaas-portal``, the trusted SAE proxy). Created once under ``<state>/pki``;
private keys are written with mode 0600 and never leave the state directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PORTAL_CN = "qxaas-portal"
NODE_CN_PREFIX = "kme-node:"
VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class TwinPKI:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.ca = CertPair(self.dir / "ca.pem", self.dir / "ca.key")
        # One node per process: the processes share the state directory; one of them creates the PKI.
        self._lock = open(self.dir / ".lock", "w")  # noqa: SIM115 (held for the object's life)
        with self._locked():
            if not self.ca.cert.exists():
                self._create_ca()
        self._ca_cert = x509.load_pem_x509_certificate(self.ca.cert.read_bytes())
        self._ca_key = serialization.load_pem_private_key(self.ca.key.read_bytes(), password=None)

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "QXaaS SD-QKD twin CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(self.ca.key, key)
        self.ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _issue(self, stem: str, common_name: str, server: bool) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        with self._locked():
            return self._issue_locked(pair, common_name, server)

    def _issue_locked(self, pair: CertPair, common_name: str, server: bool) -> CertPair:
        if pair.cert.exists() and pair.key.exists():
            return pair
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        _write_key(pair.key, key)
        tmp = pair.cert.with_suffix(".pem.tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tmp.replace(pair.cert)  # the certificate appears last: its presence means the pair is complete
        return pair

    def kme_server(self, node_id: str) -> CertPair:
        return self._issue(f"kme-{node_id}", f"KME {node_id}", server=True)

    def sae_client(self, sae_id: str) -> CertPair:
        return self._issue(f"sae-{sae_id}", sae_id, server=False)

    def node_client(self, node_id: str) -> CertPair:
        return self._issue(f"node-{node_id}", NODE_CN_PREFIX + node_id, server=False)

    def portal_client(self) -> CertPair:
        return self._issue("portal", PORTAL_CN, server=False)

    # -- TLS contexts ------------------------------------------------------------------------------------
    def server_context(self, node_id: str) -> ssl.SSLContext:
        pair = self.kme_server(node_id)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca.cert))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        # OPTIONAL, not REQUIRED: a client without a certificate gets an ETSI 401 body instead of a TLS alert.
        # A certificate that does not chain to the twin CA still fails the handshake.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def client_context(self, pair: CertPair) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca.cert))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx
