"""Local stand-ins for what runs elsewhere: a QRNG appliance and the twin's entropy endpoint, on loopback.

The real appliances are vendor hardware and the twin is another engineer's server; these servers mimic their
documented response shapes so the clients are exercised over real sockets.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fixtures import TEST_PLAN_LIMITS


class ApplianceHandler(BaseHTTPRequestHandler):
    """Routes by path; ``bytes``/``size`` query parameters say how much to send."""

    rng = np.random.default_rng(11)
    lock = threading.Lock()
    calls: dict[str, int] = {}
    slow_seconds = 2.0

    def log_message(self, format, *args):  # keep test output clean
        pass

    def _random(self, n: int) -> bytes:
        with self.lock:
            return self.rng.bytes(n)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
            self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        n = int(query.get("bytes", query.get("size", "32")))
        with self.lock:
            self.calls[url.path] = self.calls.get(url.path, 0) + 1
        if url.path == "/raw":
            self._send(200, self._random(n), "application/octet-stream")
        elif url.path == "/short":  # an appliance that sends at most 100 bytes per call
            self._send(200, self._random(min(n, 100)), "application/octet-stream")
        elif (
            url.path == "/qrypt"
        ):  # {"random": [base64 1 KiB blocks], "size": ...}, rounded up to whole blocks
            blocks = [base64.b64encode(self._random(1024)).decode() for _ in range(-(-n // 1024))]
            self._send(200, json.dumps({"random": blocks, "size": len(blocks)}).encode(), "application/json")
        elif url.path == "/anu":  # {"type": "uint8", "length": n, "data": [...], "success": true}
            data = list(self._random(n))
            body = {"type": "uint8", "length": n, "data": data, "success": True}
            self._send(200, json.dumps(body).encode(), "application/json")
        elif url.path == "/nested":
            body = {"result": {"entropy": base64.b64encode(self._random(n)).decode()}}
            self._send(200, json.dumps(body).encode(), "application/json")
        elif url.path == "/hex":
            body = {"data": [self._random(2).hex() for _ in range(-(-n // 2))], "success": True}
            self._send(200, json.dumps(body).encode(), "application/json")
        elif url.path == "/slow":
            time.sleep(self.slow_seconds)
            self._send(200, self._random(n), "application/octet-stream")
        elif url.path == "/flaky":  # fails twice, then works
            if self.calls[url.path] <= 2:
                self._send(503, b"busy", "text/plain")
            else:
                self._send(200, self._random(n), "application/octet-stream")
        elif url.path == "/stuck":
            self._send(200, b"\x55" * n, "application/octet-stream")
        elif url.path == "/forbidden":
            self._send(403, b"no", "text/plain")
        elif url.path == "/garbage":
            self._send(200, b"{not json", "application/json")
        elif url.path == "/api/v1/entropy":  # the twin's contract
            headers = {"X-Entropy-Source": "twin-simulated", "X-Entropy-Simulated": "true"}
            self._send(200, self._random(n), "application/octet-stream", headers)
        elif url.path == "/undeclared/api/v1/entropy":  # a twin look-alike that does not say it is simulated
            self._send(200, self._random(n), "application/octet-stream")
        else:
            self._send(404, b"not found", "text/plain")


def _serve(server: ThreadingHTTPServer):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def appliance():
    """A plain-HTTP QRNG appliance on 127.0.0.1; yields its base URL."""
    ApplianceHandler.calls = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), ApplianceHandler)
    server.daemon_threads = True
    thread = _serve(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _cert(subject: str, key, issuer_cert=None, issuer_key=None, ca=False, server=False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return str(path)


@pytest.fixture
def mtls_twin(tmp_path):
    """The twin's entropy endpoint over HTTPS with client certificates; yields its URL and PKI files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert("127.0.0.1", server_key, ca, ca_key, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _cert("portal", client_key, ca, ca_key)
    files = {
        "ca": _write(tmp_path / "ca.pem", cert=ca),
        "server_cert": _write(tmp_path / "server.pem", cert=server_cert),
        "server_key": _write(tmp_path / "server.key", key=server_key),
        "client_cert": _write(tmp_path / "client.pem", cert=client_cert),
        "client_key": _write(tmp_path / "client.key", key=client_key),
    }
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files["ca"])
    context.load_cert_chain(files["server_cert"], files["server_key"])
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), ApplianceHandler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = _serve(server)
    yield {"url": f"https://127.0.0.1:{server.server_address[1]}", **files}
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# -- the Django layer: tenants with entropy tokens, sources configured per test ------------------------------

ENTROPY_PER_DAY = 64 << 20


@pytest.fixture
def plan_limits() -> dict[str, int]:
    """64 MiB of entropy a day (the shared test plan has 10^6 bytes, less than 1 MiB)."""
    return {**TEST_PLAN_LIMITS, "entropy_bytes.day": ENTROPY_PER_DAY}


@pytest.fixture
def use_sources(settings):
    """Configure the portal's entropy sources for one test (a fresh service and a private pool)."""
    import uuid

    from qrng import runtime

    settings.QRNG_POOL_KEY = f"qxaas:test-qrng:{uuid.uuid4().hex}"
    runtime.reset_service()

    def use(configs: list[dict]) -> None:
        settings.QRNG_SOURCES = json.dumps(configs)
        runtime.reset_service()

    yield use
    runtime.reset_service()  # also drops what the test left in the (Redis) pool


@pytest.fixture
def random_file(tmp_path):
    """A file of seeded random bytes as a device source: deterministic, and every served byte can be located."""

    def make(size: int = 4 << 20, seed: int = 5, name: str = "qrng.bin") -> tuple[str, bytes]:
        data = np.random.default_rng(seed).bytes(size)
        path = tmp_path / name
        path.write_bytes(data)
        return str(path), data

    return make


class EntropyLab:
    def __init__(self, tenant, owner, client):
        self.tenant, self.owner, self.client = tenant, owner, client

    def get(self, url: str, **kwargs):
        return self.client.get(url, **kwargs)

    def ledger(self) -> list:
        from tenants.models import UsageRecord

        return list(UsageRecord.objects.for_tenant(self.tenant).filter(meter="entropy_bytes").order_by("id"))

    def charged(self) -> int:
        return sum(r.quantity for r in self.ledger())


@pytest.fixture
def make_entropy_lab(make_tenant, member, client_for):
    """A tenant with an owner and an API client (``entropy:read`` unless told), its entropy ledger at hand."""

    def make(slug: str, scopes: list[str] | None = None) -> EntropyLab:
        tenant = make_tenant(slug)
        owner = member(tenant, f"{slug}-owner")
        return EntropyLab(tenant, owner, client_for(owner, tenant, scopes or ["entropy:read"]))

    return make


# -- the real twin's QRNG (not a stand-in): its entropy endpoint over mutual TLS ----------------------------------


@pytest.fixture(scope="session")
def qrng_twin(tmp_path_factory):
    """The real network twin (``python -m services.sdqkd.twin``), for its ``/api/v1/entropy`` over mTLS; yields
    the same keys as ``mtls_twin`` (url of node CAIT, ca, client_cert, client_key) plus ``state_dir``, so the
    portal's default path can find it through its ``endpoints.json``."""
    from tests.twin.conftest import start_twin

    twin = start_twin(tmp_path_factory.mktemp("qrng-twin") / "state", "madqci")
    cert, key = twin.portal_cert
    yield {"url": twin.url("CAIT"), "ca": twin.ca, "client_cert": cert, "client_key": key,
           "state_dir": str(twin.state_dir), "twin": twin}
    twin.stop()
