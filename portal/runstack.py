"""Run the whole QXaaS stack in the foreground: web, Celery worker, Celery beat (and the QKD network twin).

``make run`` calls this after migrating. Ctrl-C (or SIGTERM) stops every process cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 15
GUNICORN_CONFIG = "python:portal.gunicorn_conf"  # worker hooks (gc.freeze after loading the portal)


def etsi_https_command(port: int, workers: int = 2, upstream: str | None = None) -> list[str]:
    """The key gateway (``services.gateway``) on HTTPS: ETSI 014 itself, with SAE client certificates (optional
    at the TLS layer, verified against the portal CA) or tokens; every other path forwarded to ``upstream``
    (the web listener) with the verified certificate vouched for."""
    cmd = [sys.executable, "-m", "services.gateway", "--port", str(port), "--processes", str(workers)]
    return [*cmd, "--upstream", upstream] if upstream else cmd


def commands(port: int) -> dict[str, list[str]]:
    py = sys.executable
    var = os.environ.get("QXAAS_VAR_DIR", str(BASE_DIR / "var"))
    procs = {
        "web": [py, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--threads", "4", "--access-logfile", "-", "--graceful-timeout", "10", "--config", GUNICORN_CONFIG],
        "etsi-https": etsi_https_command(int(os.environ.get("ETSI_HTTPS_PORT", "8443")),
                                         upstream=f"http://127.0.0.1:{port}"),
        "worker": [py, "-m", "celery", "-A", "portal", "worker", "--loglevel", "INFO", "--concurrency", "2"],
        "beat": [py, "-m", "celery", "-A", "portal", "beat", "--loglevel", "INFO",
                 "--schedule", f"{var}/celerybeat-schedule"],
    }
    embedded_twin = os.environ.get("QKD_EMBEDDED_TWIN", "true").lower() in ("1", "true", "yes")
    if embedded_twin and find_spec("services.sdqkd.twin.__main__") is not None:
        state = os.environ.get("QKD_TWIN_STATE_DIR", f"{var}/twin")
        procs["twin"] = [py, "-m", "services.sdqkd.twin", "--state-dir", state,
                         "--topology", os.environ.get("QKD_TWIN_TOPOLOGY", "madqci")]
    return procs


# Each process kind writes its metrics into a folder of its own (prometheus_client's multiprocess mode), emptied
# at start; the web listener's /metrics also sums the worker's (docs/operations.md, "Metrics").
METRICS_FOLDERS = {"web": "web", "worker": "worker", "etsi-https": "gateway"}


def child_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    folder = METRICS_FOLDERS.get(name)
    if folder is None:
        return env
    root = Path(os.environ.get("QXAAS_VAR_DIR", str(BASE_DIR / "var"))) / "metrics"
    path = root / folder
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if name == "web":
        env["METRICS_EXTRA_DIRS"] = str(root / "worker")
    return env


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, cmd in commands(port).items():
        children[name] = subprocess.Popen(cmd, cwd=BASE_DIR, env=child_env(name))  # noqa: S603 - our own commands
        print(f"[runstack] started {name} (pid {children[name].pid})", flush=True)
    # The IPsec lab (namespaces + one charon per node; needs root and strongSwan, else IPsec says unavailable).
    subprocess.run([sys.executable, "manage.py", "ipsec_lab", "up"], cwd=BASE_DIR, check=False)
    if os.environ.get("QXAAS_DEMO") and "twin" in children:
        # make run: give the demo tenant SAEs with certificate bundles once the twin is up.
        subprocess.run([sys.executable, "manage.py", "demo_saes"], cwd=BASE_DIR, check=False)
    etsi_port = os.environ.get("ETSI_HTTPS_PORT", "8443")
    print(f"[runstack] QXaaS is up: http://127.0.0.1:{port}/  (API docs: http://127.0.0.1:{port}/api/docs/,"
          f" ETSI 014 over mTLS: https://127.0.0.1:{etsi_port}/api/v1/keys/)  — Ctrl-C stops everything", flush=True)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"[runstack] {name} exited with {child.returncode}; stopping the stack", flush=True)
                exit_code, stopping = 1, True
                break
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[runstack] {name} did not stop in time; killing it", flush=True)
            child.kill()
            child.wait()
    subprocess.run([sys.executable, "manage.py", "ipsec_lab", "down"], cwd=BASE_DIR, check=False)
    print("[runstack] stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
