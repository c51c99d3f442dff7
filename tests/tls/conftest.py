"""TLS session fixtures: the real madqci twin as the QKD backend (tests/services), real stunnel endpoints under a
private state directory, a plain HTTP test server behind node B, Celery tasks run in-process."""

from __future__ import annotations

import http.server
import os
import shutil
import threading

import pytest

from portal.celery_app import app
from tls import services
from tls.endpoints import Supervisor

TLS_SCOPES = ["tls:read", "tls:write", "keys:read", "keys:write", "billing:read"]


def require_stunnel() -> None:
    if not (shutil.which("stunnel4") or shutil.which("stunnel")):
        pytest.skip("stunnel4 is not installed (scripts/test.sh installs it)")  # fails under CI (tests/conftest.py)


class Backend(http.server.BaseHTTPRequestHandler):
    """The service behind node B: answers every GET with its path."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from B: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def target():
    """A real HTTP server on loopback (the target behind B); yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_dir(tmp_path, settings):
    """A private state directory for the endpoints; every stunnel left in it is stopped after the test."""
    require_stunnel()
    settings.TLS_STATE_DIR = str(tmp_path / "tls")
    yield settings.TLS_STATE_DIR
    sup = Supervisor(settings.TLS_STATE_DIR)
    for name in sup.names():
        sup.stop(name)


@pytest.fixture
def eager():
    """Celery tasks run in the calling process (the worker side, without a broker)."""
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def tls_lab(make_lab, member, client_for, tls_dir, eager):
    lab = make_lab("acme")
    user = member(lab.tenant, "acme-tls")
    lab.tls = client_for(user, lab.tenant, TLS_SCOPES)
    return lab


def stunnel_pids(state_dir: str) -> list[int]:
    """Every running stunnel whose configuration lies under ``state_dir``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()  # noqa: SIM115
            except OSError:
                continue
            if b"stunnel" in cmdline and state_dir.encode() in cmdline:
                pids.append(int(entry))
    return pids


__all__ = ["services", "stunnel_pids"]
