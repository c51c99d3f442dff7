"""Handshake timing in Python 3.13 (ssl PSK callbacks), run by ``bench/tls_sessions.py`` as a subprocess.

    python3.13 bench/tls_handshake313.py inproc N
    python3.13 bench/tls_handshake313.py remote N PSK_PORT CERT_PORT IDENTITY PSK_FILE CA_FILE

``inproc``: client and server in this process over loopback TCP, N full handshakes each of TLS 1.3 external PSK
(psk_dhe_ke, X25519) and TLS 1.3 with an ECDSA P-256 certificate (X25519), verified by the client. ``remote``:
N full handshakes against two stunnel server endpoints (PSK / certificate). Prints JSON: p50 and p90 in ms.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50_ms": statistics.median(values) * 1e3, "p90_ms": values[int(len(values) * 0.9)] * 1e3,
            "n": len(values)}


def psk_client(identity: str, key: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_psk_client_callback(lambda hint: (identity, key))
    return ctx


def cert_client(ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the self-signed test certificate names no host; the chain is verified
    ctx.load_verify_locations(ca)
    return ctx


def handshake(ctx: ssl.SSLContext, port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw) as conn:
            conn.do_handshake()
            return time.perf_counter() - started


def alternate(runs: dict[str, tuple[ssl.SSLContext, int]], n: int) -> dict[str, dict[str, float]]:
    """``n`` handshakes of each kind, taking turns, so the machine's load (shared, noisy) weighs on both alike."""
    for ctx, port in runs.values():
        for _ in range(20):  # warm-up
            handshake(ctx, port)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(n):
        for name, (ctx, port) in runs.items():
            times[name].append(handshake(ctx, port))
    return {name: quantiles(values) for name, values in times.items()}


def serve(ctx: ssl.SSLContext, listener: socket.socket, n: int) -> None:
    for _ in range(n):
        raw, _ = listener.accept()
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                conn.recv(1)  # until the client closes
        except (ssl.SSLError, OSError):
            pass


def inproc(n: int) -> dict:
    key, identity = os.urandom(32), "bench-key-id"
    with tempfile.TemporaryDirectory() as tmp:
        cert, pkey = f"{tmp}/c.pem", f"{tmp}/k.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", pkey, "-out", cert, "-days", "1", "-subj", "/CN=bench"], check=True,
                       capture_output=True)
        runs, threads = {}, []
        for name in ("psk", "cert"):
            srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            srv.minimum_version = ssl.TLSVersion.TLSv1_3
            srv.options |= ssl.OP_NO_TICKET
            if name == "psk":
                srv.set_psk_server_callback(lambda offered: key if offered == identity else b"")
                cli = psk_client(identity, key)
            else:
                srv.load_cert_chain(cert, pkey)
                cli = cert_client(cert)
            listener = socket.create_server(("127.0.0.1", 0))
            threads.append(threading.Thread(target=serve, args=(srv, listener, n + 20), daemon=True))
            threads[-1].start()
            runs[name] = (cli, listener.getsockname()[1])
        return alternate(runs, n)


def remote(n: int, psk_port: int, cert_port: int, identity: str, psk_file: str, ca: str) -> dict:
    key = bytes.fromhex(open(psk_file).read().strip())  # noqa: SIM115 - a one-off read
    return alternate({"psk": (psk_client(identity, key), psk_port), "cert": (cert_client(ca), cert_port)}, n)


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "inproc":
        print(json.dumps(inproc(n)))
    else:
        print(json.dumps(remote(n, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7])))
