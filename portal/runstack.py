"""Run the whole QXaaS stack in the foreground: web, key gateway, Celery workers and beat (and the QKD twin).

``make run`` calls this after migrating. It is a supervisor that heals: a component that exits is logged with
its exit cause and restarted after a backoff (0.5 s, doubling to 10 s; back to 0.5 s once it has run for a
minute). The stack stops only on Ctrl-C/SIGTERM, or when one component crash-loops (``CRASH_LOOP_RESTARTS``
restarts within ``CRASH_LOOP_WINDOW_S``): then it names the component and prints its last log lines.

Each component runs in its own process group, so a component whose leader died (kill -9) takes its own
children with it (gunicorn workers, the Celery pool, the twin's protocol workers) before it is started again:
no orphan keeps a port or a queue. Adding a component is one entry in ``commands()``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 15
GUNICORN_CONFIG = "python:portal.gunicorn_conf"  # worker hooks (gc.freeze after loading the portal)
BACKOFF_MIN_S = float(os.environ.get("RUNSTACK_BACKOFF_MIN_S", "0.5"))
BACKOFF_MAX_S = float(os.environ.get("RUNSTACK_BACKOFF_MAX_S", "10"))
HEALTHY_AFTER_S = 60.0  # a component that ran this long starts again from the shortest backoff
CRASH_LOOP_RESTARTS = int(os.environ.get("RUNSTACK_CRASH_LOOP_RESTARTS", "5"))
CRASH_LOOP_WINDOW_S = float(os.environ.get("RUNSTACK_CRASH_LOOP_WINDOW_S", "60"))
LAST_LINES = 20  # of a component's output, shown when it crash-loops
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
        "worker": [py, "-m", "celery", "-A", "portal", "worker", "-Q", "celery", "-n", "main@%h", "--loglevel", "INFO",
                   "--concurrency", "2"],
        # Quality reports (16 MiB of entropy and a statistical battery each) on their own queue and worker, so
        # they never hold up provisioning, key-stream filling and order expiry (CELERY_TASK_ROUTES).
        "worker-quality": [py, "-m", "celery", "-A", "portal", "worker", "-Q", "quality", "-n", "quality@%h",
                           "--loglevel", "INFO", "--concurrency", "1"],
        "beat": [py, "-m", "celery", "-A", "portal", "beat", "--loglevel", "INFO",
                 "--schedule", f"{var}/celerybeat-schedule"],
        # the IPsec gateways' VICI event streams (idle while no gateway is registered)
        "ipsec-events": [py, str(BASE_DIR / "manage.py"), "ipsec_events"],
    }
    embedded_twin = os.environ.get("QKD_EMBEDDED_TWIN", "true").lower() in ("1", "true", "yes")
    if embedded_twin and find_spec("services.sdqkd.twin.__main__") is not None:
        state = os.environ.get("QKD_TWIN_STATE_DIR", f"{var}/twin")
        procs["twin"] = [py, "-m", "services.sdqkd.twin", "--state-dir", state,
                         "--topology", os.environ.get("QKD_TWIN_TOPOLOGY", "madqci"),
                         *shlex.split(os.environ.get("QKD_TWIN_ARGS", ""))]  # e.g. "--base-port 9400"
    return procs


def log(message: str) -> None:
    print(f"[runstack] {message}", flush=True)


def exit_cause(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (even by kill -9), so no component outlives
    it in its own session (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# Each process kind writes its metrics into a folder of its own (prometheus_client's multiprocess mode), emptied
# at (re)start; the web listener's /metrics also sums the worker's (docs/operations.md, "Metrics").
METRICS_FOLDERS = {"web": "web", "worker": "worker", "worker-quality": "worker-quality", "etsi-https": "gateway"}


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
        env["METRICS_EXTRA_DIRS"] = f"{root / 'worker'},{root / 'worker-quality'}"
    return env


@dataclass
class Component:
    """One supervised process (and its process group)."""

    name: str
    cmd: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff_s: float = field(default_factory=lambda: BACKOFF_MIN_S)
    restart_at: float | None = None  # when a dead component is due to start again
    restarts: collections.deque = field(default_factory=collections.deque)  # monotonic times of restarts
    last_lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LAST_LINES))

    def start(self) -> None:
        # Own session and process group: the supervisor signals (and, when the leader dies, kills) the group.
        self.proc = subprocess.Popen(self.cmd, cwd=BASE_DIR, stdout=subprocess.PIPE,  # noqa: S603 - fixed commands
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
                                     env=child_env(self.name))
        self.started_at, self.restart_at = time.monotonic(), None
        threading.Thread(target=self._relay, args=(self.proc,), name=f"log-{self.name}", daemon=True).start()

    def _relay(self, proc: subprocess.Popen) -> None:
        """Copy the component's output to ours, line by line, keeping the last lines for a crash report."""
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.last_lines.append(line)
            with contextlib.suppress(ValueError, OSError):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        proc.stdout.close()

    def signal_group(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, components: dict[str, list[str]]) -> None:
        self.components = {name: Component(name, cmd) for name, cmd in components.items()}
        self.stopping = False
        self.crash_looped: Component | None = None

    def request_stop(self, *_args) -> None:
        self.stopping = True

    def start_all(self) -> None:
        for component in self.components.values():
            component.start()
            log(f"started {component.name} (pid {component.proc.pid})")

    def check(self) -> None:
        """One round: notice exits, schedule restarts with backoff, restart what is due."""
        now = time.monotonic()
        for c in self.components.values():
            if c.restart_at is None and c.proc is not None and c.proc.poll() is not None:
                cause = exit_cause(c.proc.returncode)
                c.signal_group(signal.SIGKILL)  # what the dead leader left behind (workers, pool children)
                if now - c.started_at >= HEALTHY_AFTER_S:
                    c.backoff_s = BACKOFF_MIN_S
                while c.restarts and now - c.restarts[0] > CRASH_LOOP_WINDOW_S:
                    c.restarts.popleft()
                if len(c.restarts) >= CRASH_LOOP_RESTARTS:
                    log(f"{c.name} {cause} after {len(c.restarts)} restarts within {CRASH_LOOP_WINDOW_S:.0f} s: "
                        f"it is crash-looping; stopping the stack. Its last log lines:")
                    for line in c.last_lines:
                        print(f"    {c.name} | {line}", flush=True)
                    self.crash_looped, self.stopping = c, True
                    return
                c.restart_at = now + c.backoff_s
                log(f"{c.name} (pid {c.proc.pid}) {cause}; restarting it in {c.backoff_s:.1f} s")
                c.backoff_s = min(c.backoff_s * 2, BACKOFF_MAX_S)
            elif c.restart_at is not None and now >= c.restart_at:
                c.restarts.append(now)
                old = c.proc.pid
                c.start()
                log(f"restarted {c.name} (pid {c.proc.pid}, was {old}; restart {len(c.restarts)} "
                    f"in the last {CRASH_LOOP_WINDOW_S:.0f} s)")

    def stop_all(self) -> None:
        for c in self.components.values():
            if c.alive():
                c.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in self.components.values():
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{c.name} did not stop in time; killing it")
                c.signal_group(signal.SIGKILL)
                c.proc.wait()
            c.signal_group(signal.SIGKILL)  # anything of its group still there


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    supervisor = Supervisor(commands(port))
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    supervisor.start_all()
    # The IPsec lab (namespaces + one charon per node; needs root and strongSwan, else IPsec says unavailable).
    subprocess.run([sys.executable, "manage.py", "ipsec_lab", "up"], cwd=BASE_DIR, check=False)
    if os.environ.get("QXAAS_DEMO") and "twin" in supervisor.components:
        # make run: give the demo tenant SAEs with certificate bundles once the twin is up.
        subprocess.run([sys.executable, "manage.py", "demo_saes"], cwd=BASE_DIR, check=False)
    etsi_port = os.environ.get("ETSI_HTTPS_PORT", "8443")
    log(f"QXaaS is up: http://127.0.0.1:{port}/  (API docs: http://127.0.0.1:{port}/api/docs/,"
        f" ETSI 014 over mTLS: https://127.0.0.1:{etsi_port}/api/v1/keys/)  — Ctrl-C stops everything")
    while not supervisor.stopping:
        supervisor.check()
        time.sleep(0.2)
    supervisor.stop_all()
    subprocess.run([sys.executable, "manage.py", "ipsec_lab", "down"], cwd=BASE_DIR, check=False)
    if supervisor.crash_looped is not None:
        log(f"stopped: {supervisor.crash_looped.name} crash-looped (see its last log lines above)")
        return 1
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
