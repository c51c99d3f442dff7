"""The web listener (gunicorn with the portal's config) and the key gateway as production runs them, on the test
database, each with its own PROMETHEUS_MULTIPROC_DIR (as deploy/systemd does)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from portal.runstack import GUNICORN_CONFIG, etsi_https_command
from services import pki
from tests.services.listener import _wait, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    base: str  # the key gateway, https
    web: str  # the web listener, http
    log: Path
    web_metrics_dir: Path
    gateway_metrics_dir: Path
    worker_metrics_dir: Path | None = None


@contextmanager
def web_and_gateway(tmp_path: Path, *, workers: int = 2, gateway_processes: int = 2, celery_worker: bool = False,
                    **extra_env: str) -> Iterator[Stack]:
    """``celery_worker``: also a Celery worker (prefork, one child) whose metrics folder the web listener sums
    (``METRICS_EXTRA_DIRS``), as deploy/systemd sets it up."""
    if connection.vendor != "postgresql":
        pytest.skip("the listeners share the database with server processes: PostgreSQL")
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}",
           "QKD_AUTO_REGISTER_TWIN": "false", "QXAAS_VAR_DIR": str(settings.VAR_DIR),
           "DJANGO_SETTINGS_MODULE": "portal.settings.base", **extra_env}
    web_dir, gateway_dir = tmp_path / "metrics-web", tmp_path / "metrics-gateway"
    worker_dir = tmp_path / "metrics-worker"
    for folder in (web_dir, gateway_dir, worker_dir):
        folder.mkdir()
    web_port, port = free_port(), free_port()
    web, base = f"http://127.0.0.1:{web_port}", f"https://127.0.0.1:{port}"
    log = tmp_path / "stack.log"
    with log.open("w") as out:
        procs = [
            subprocess.Popen([sys.executable, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{web_port}",
                              "--workers", str(workers), "--threads", "4", "--access-logfile", "-",
                              "--config", GUNICORN_CONFIG],
                             cwd=ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(web_dir),
                                            "METRICS_EXTRA_DIRS": str(worker_dir)}, stdout=out,
                             stderr=subprocess.STDOUT),
            subprocess.Popen(etsi_https_command(port, workers=gateway_processes, upstream=web),
                             cwd=ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(gateway_dir)}, stdout=out,
                             stderr=subprocess.STDOUT),
        ]
        if celery_worker:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "portal", "worker", "--concurrency", "1", "--loglevel", "INFO"],
                cwd=ROOT, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(worker_dir)}, stdout=out,
                stderr=subprocess.STDOUT))
    try:
        _wait(web + "/healthz", procs, log)
        _wait(base + "/gateway/healthz", procs, log, verify=str(pki.pki_dir() / "ca.crt"))
        yield Stack(base, web, log, web_dir, gateway_dir, worker_dir if celery_worker else None)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
