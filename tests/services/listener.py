"""The portal's HTTPS listener as `make run` starts it, for tests: the key gateway on a free port, forwarding
to a gunicorn web listener, both on the test database (PostgreSQL: they are other processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from portal.runstack import etsi_https_command
from services import pki

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, procs: list[subprocess.Popen], log: Path, verify: str | bool = False) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, verify=verify, timeout=1)
            return
        except requests.RequestException:
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


@contextmanager
def https_portal(tmp_path: Path, log_level: str = "info", verify: str | None = None,
                 **extra_env: str) -> Iterator[tuple[str, str, Path]]:
    """(gateway https URL, web listener http URL, the log both write). ``extra_env``: settings for both;
    ``verify``: the CA the gateway's certificate chains to (default the portal CA)."""
    if connection.vendor != "postgresql":
        pytest.skip("the listener shares the database with server processes: PostgreSQL")
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}",
           "QKD_AUTO_REGISTER_TWIN": "false", "LOG_LEVEL": log_level.upper(),
           "QXAAS_VAR_DIR": str(settings.VAR_DIR), "DJANGO_SETTINGS_MODULE": "portal.settings.base", **extra_env}
    web_port, port = free_port(), free_port()
    web = f"http://127.0.0.1:{web_port}"
    log = tmp_path / "portal.log"
    with log.open("w") as out:
        procs = [subprocess.Popen([sys.executable, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{web_port}",
                                   "--workers", "1", "--threads", "4", "--access-logfile", "-"],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT),
                 subprocess.Popen([*etsi_https_command(port, upstream=web), "--log-level", log_level],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)]
    base = f"https://127.0.0.1:{port}"
    try:
        _wait(web + "/healthz", procs, log)
        _wait(base + "/gateway/healthz", procs, log, verify=verify or str(pki.pki_dir() / "ca.crt"))
        yield base, web, log
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
