"""TLS sessions: handshakes with a QKD PSK vs a certificate, the managed pair's cost, API call to first byte.

The portal runs in-process (SQLite, Celery tasks eager: the API call provisions before it answers) against the
madqci twin; endpoints are real stunnel daemons on loopback. Figures, each against a baseline of the same run:

  1. handshake latency, TLS 1.3 external QKD PSK with X25519 (psk_dhe_ke) vs TLS 1.3 with an ECDSA P-256
     certificate (X25519), the client verifying it; the same stack for both: (a) Python 3.13 ``ssl`` (OpenSSL
     3) client and server in one process; (b) a Python 3.13 client against stunnel server endpoints (the
     session's own B endpoint, and a stunnel with the certificate). Goal: PSK <= 0.8x certificate;
  2. the managed pair's overhead: a small HTTP request on a new connection through A's port (plaintext -> A ->
     TLS -> B -> target) vs straight to the target (p50 ratio);
  3. time from the API call (POST /api/tls/sessions) to the first byte of a response through the new pair;
  4. throughput of one connection through the pair vs direct TCP to the same sink (ratio).

    .venv/bin/python bench/tls_sessions.py [--handshakes 300] [--requests 200] [--mib 64] [--orders 5]
"""

from __future__ import annotations

import argparse
import glob
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from etsi004_streams import setup_portal  # noqa: E402 - after the path is set

PY313 = (sorted(glob.glob("/root/.pyenv/versions/3.13*/bin/python")) or [shutil.which("python3.13") or ""])[-1]


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


def serve_sink() -> socket.socket:
    """A sink: reads an 8-byte length, then that many bytes, then answers b"done"."""
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                want = int.from_bytes(_read(conn, 8), "big")
            except ConnectionError:  # the portal's reachability check connects and closes
                return
            got = 0
            while got < want:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                got += len(chunk)
            conn.sendall(b"done")

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return listener


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def http_get(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        while s.recv(4096):
            pass
    return time.perf_counter() - started


def send_bulk(port: int, mib: int) -> float:
    block = os.urandom(1 << 20)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall((mib << 20).to_bytes(8, "big"))
        for _ in range(mib):
            s.sendall(block)
        assert _read(s, 4) == b"done"
    return time.perf_counter() - started


def p50(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def cert_stunnel(tmp: Path, target: int) -> tuple[subprocess.Popen, int, str]:
    """A stunnel server endpoint like B's, with an ECDSA P-256 certificate instead of the PSK."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=bench"], check=True,
                   capture_output=True)
    port = _free_port()
    conf = tmp / "cert.conf"
    # The managed server endpoint's options (tls.endpoints), with a certificate in place of the PSK.
    conf.write_text("\n".join([
        "foreground = yes", f"output = {tmp / 'cert.log'}", "syslog = no", "debug = warning", "[cert]",
        f"accept = 127.0.0.1:{port}", f"connect = 127.0.0.1:{target}", f"cert = {cert}", f"key = {key}",
        "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", "sslVersionMin = TLSv1.3", "curves = X25519",
        "options = NO_TICKET"]) + "\n")
    proc = subprocess.Popen([shutil.which("stunnel4") or "stunnel", str(conf)])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port, str(cert)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lab(endpoints: dict):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from services import registry
    from tenants.models import Membership, Plan, Role, Tenant
    from tenants.services import set_plan_limits
    from tenants.tokens import issue_token

    registry.register_twin(endpoints)
    plan = Plan.objects.create(name="Bench", slug="bench")
    set_plan_limits(plan, {"qkd_key_bits.day": -1, "qkd_key_bits.month": -1, "tls_sessions": 20})
    tenant = Tenant.objects.create(name="Bench", slug="bench", plan=plan)
    user = get_user_model().objects.create_user("bench", "bench@example.org", "bench-password-1")
    Membership.objects.create(tenant=tenant, user=user, role=Role.OWNER)
    _, secret = issue_token(user, tenant, "bench", ["tls:read", "tls:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--orders", type=int, default=5)
    args = parser.parse_args()
    if not (shutil.which("stunnel4") or shutil.which("stunnel")):
        sys.exit("stunnel4 is needed (Debian stunnel4)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        setup_portal(tmp / "var")
        from django.conf import settings

        from portal.celery_app import app
        from tests.twin.conftest import start_twin
        from tls.endpoints import Supervisor

        settings.TLS_STATE_DIR = str(tmp / "tls")
        app.conf.task_always_eager = True
        twin = start_twin(tmp / "twin", "madqci", time_scale=50.0)
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        target = web.server_address[1]
        sink = serve_sink()
        cert_proc = None
        try:
            twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=200, timeout=30)
            client = make_lab(twin.endpoints)
            body = {"node_a": "CAIT", "node_b": "Rectorado", "target": f"127.0.0.1:{target}"}

            # 3. API call -> first byte through the new pair (each session closed after).
            firsts = []
            for _ in range(args.orders):
                started = time.perf_counter()
                created = client.post("/api/tls/sessions", body, format="json").json()
                assert created["state"] == "active", created
                port = int(created["client_endpoint"].rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    s.recv(1)
                firsts.append(time.perf_counter() - started)
                client.post(f"/api/tls/sessions/{created['id']}/close")
            print(f"API call -> first byte through a new managed pair: p50 {p50(firsts):.0f} ms, "
                  f"min {min(firsts) * 1e3:.0f} ms, max {max(firsts) * 1e3:.0f} ms ({args.orders} sessions; "
                  "key from a 2-hop relay, two stunnel daemons started)")

            session = client.post("/api/tls/sessions", body, format="json").json()
            sid, a_port = session["id"], int(session["client_endpoint"].rsplit(":", 1)[1])
            b_port = int(session["server_endpoint"].rsplit(":", 1)[1])

            # 1. Handshakes, the same stack on both sides of each comparison.
            if PY313:
                inproc = json.loads(subprocess.run([PY313, str(REPO / "bench" / "tls_handshake313.py"), "inproc",
                                                    str(args.handshakes)], capture_output=True, check=True,
                                                   timeout=300).stdout)
                ratio = inproc["psk"]["p50_ms"] / inproc["cert"]["p50_ms"]
                print(f"handshake, Python 3.13 ssl both ends, one process: QKD PSK+X25519 p50 "
                      f"{inproc['psk']['p50_ms']:.2f} ms vs ECDSA P-256 certificate+X25519 "
                      f"{inproc['cert']['p50_ms']:.2f} ms: ratio {ratio:.2f} (goal <= 0.8)")
                cert_proc, cert_port, ca = cert_stunnel(tmp, target)
                psk_file = tmp / "psk.hex"  # the bench is the operator of node B: it reads B's PSK file
                line = (Path(settings.TLS_STATE_DIR) / sid / "server.psk").read_text().splitlines()[0]
                fd = os.open(psk_file, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, line.split(":", 1)[1].encode())
                os.close(fd)
                remote = json.loads(subprocess.run(
                    [PY313, str(REPO / "bench" / "tls_handshake313.py"), "remote", str(args.handshakes),
                     str(b_port), str(cert_port), session["psk_identity"], str(psk_file), ca],
                    capture_output=True, check=True, timeout=300).stdout)
                print(f"handshake, Python 3.13 client -> stunnel server endpoint: QKD PSK+X25519 p50 "
                      f"{remote['psk']['p50_ms']:.2f} ms (p90 {remote['psk']['p90_ms']:.2f}) vs ECDSA P-256 "
                      f"certificate+X25519 {remote['cert']['p50_ms']:.2f} ms (p90 {remote['cert']['p90_ms']:.2f}): "
                      f"ratio {remote['psk']['p50_ms'] / remote['cert']['p50_ms']:.2f} (goal <= 0.8)")
            else:
                print("handshake: skipped, no Python 3.13 here (ssl PSK callbacks)")

            # 2. The managed pair's overhead on a small request, new connection each.
            through, direct = [], []
            for i in range(args.requests + 5):  # taking turns (a noisy shared machine); 5 warm-up rounds
                for port, times in ((a_port, through), (target, direct)):
                    took = http_get(port)
                    if i >= 5:
                        times.append(took)
            print(f"HTTP request on a new connection: through the managed pair p50 {p50(through):.2f} ms vs direct "
                  f"{p50(direct):.2f} ms: ratio {p50(through) / p50(direct):.1f}x (adds two stunnel hops and one "
                  "TLS 1.3 PSK handshake)")

            # 4. Throughput, one connection.
            sink_port = sink.getsockname()[1]
            client.post(f"/api/tls/sessions/{sid}/close")
            bulk = client.post("/api/tls/sessions", {**body, "target": f"127.0.0.1:{sink_port}"},
                               format="json").json()
            bulk_port = int(bulk["client_endpoint"].rsplit(":", 1)[1])
            send_bulk(bulk_port, 4)
            send_bulk(sink_port, 4)
            t_pair = min(send_bulk(bulk_port, args.mib) for _ in range(2))
            t_direct = min(send_bulk(sink_port, args.mib) for _ in range(2))
            mbit = lambda t: args.mib * 8 * 1.048576 / t  # noqa: E731 - Mbit/s of one run
            print(f"throughput, one connection, {args.mib} MiB: through the managed pair {mbit(t_pair):.0f} Mbit/s vs "
                  f"direct TCP {mbit(t_direct):.0f} Mbit/s: ratio {t_direct / t_pair:.2f}")
            client.post(f"/api/tls/sessions/{bulk['id']}/close")
        finally:
            if cert_proc is not None:
                cert_proc.terminate()
                cert_proc.wait(5)
            sup = Supervisor(settings.TLS_STATE_DIR)
            for name in sup.names():
                sup.stop(name)
            sink.close()
            web.shutdown()
            twin.stop()


if __name__ == "__main__":
    main()
