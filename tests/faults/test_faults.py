"""Fault injection: the whole stack of ``make run`` under load, one fault at a time, must heal by itself and lose
nothing.

The stack runs as ``make run`` runs it (``portal.runstack``: gunicorn, the key gateway with 2 processes, a
Celery worker and beat, the QKD network twin), on a PostgreSQL and a Redis this test starts in its own
temporary directory (so it can restart them), all on loopback. Two tenants put a steady load on it: simple REST
keys, ETSI 014 keys over mutual TLS through the key gateway, entropy draws, and an ETSI 004 key stream each.
Then, one at a time: kill -9 the twin, the Celery worker's main process, one key-gateway process, one web
worker; restart PostgreSQL and Redis; cut a twin link (and restore it).

After each fault: service is back (every kind of request succeeds again) within ``RECOVERY_BOUND_S``, the time
is measured and printed; the load is paused and the ledger is checked: every key a client received is recorded
exactly once and handed to one request only, each delivery has one ledger row, every quota counter equals the
ledger, no stream slot is held without a live stream, and the supervisor's log names what it restarted. Keys
charged but never received are only allowed for faults that cut requests in flight (a process killed
after its commit), and are reported. Nothing is mocked.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
RECOVERY_BOUND_S = 45.0  # the test fails if a fault is not healed within this
STARTUP_BOUND_S = 90.0
LOAD_PAUSE_S = 0.1  # between two requests of one load thread
KEY_BITS = 256
REPORT_BYTES = 1 << 20  # a quality report that runs for a few seconds (it is running when the worker is killed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> int:
    for _ in range(50):
        base = random.randrange(20000, 60000)
        try:
            with contextlib.ExitStack() as stack:
                for i in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.getuid() == 0 else cmd


class Backends:
    """PostgreSQL (socket only) and Redis (loopback) of our own, so the test can restart them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pgbin = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]
        self.pgdata, self.sock = tmp / "pg", tmp / "run"
        self.redis_port = free_port()

    def start(self) -> None:
        os.chmod(self.tmp, 0o755)  # noqa: S103 - the postgres user must reach its directories
        for d in (self.pgdata, self.sock):
            d.mkdir()
            if os.getuid() == 0:
                shutil.chown(d, "postgres")
        subprocess.run(as_postgres([str(self.pgbin / "initdb"), "-D", str(self.pgdata), "-A", "trust", "-U",
                                    "postgres"]), check=True, capture_output=True, timeout=120)
        self.start_pg()
        subprocess.run(as_postgres([str(self.pgbin / "createdb"), "-h", str(self.sock), "-U", "postgres", "qxaas"]),
                       check=True, capture_output=True, timeout=60)
        self.start_redis()

    def start_pg(self) -> None:
        subprocess.run(as_postgres([
            str(self.pgbin / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"), "-w", "-o",
            # fsync=off is safe here (the OS does not crash, only PostgreSQL); synchronous_commit must stay on:
            # with it off, an immediate stop loses commits already acknowledged (keys handed out, no record).
            f"-k {self.sock} -c listen_addresses='' -c max_connections=200 -c fsync=off", "start"]),
            check=True, capture_output=True, timeout=60)

    def stop_pg(self, mode: str = "immediate") -> None:
        subprocess.run(as_postgres([str(self.pgbin / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w",
                                    "stop"]), capture_output=True, timeout=60)

    def start_redis(self) -> None:
        subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--daemonize", "yes",
                        "--pidfile", str(self.tmp / "redis.pid"), "--dir", str(self.tmp), "--save", "",
                        "--appendonly", "no"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.redis_port), 0.5):
                return
            time.sleep(0.05)

    def stop_redis(self) -> None:
        pidfile = self.tmp / "redis.pid"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{urllib.parse.quote(str(self.sock), safe='')}/qxaas"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (from /proc: no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


class Stack:
    def __init__(self, tmp: Path, backends: Backends) -> None:
        self.tmp, self.backends = tmp, backends
        self.var = tmp / "var"
        self.port, self.etsi_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "QKD_TWIN_STATE_DIR")}
        self.env.update(
            QXAAS_VAR_DIR=str(self.var), DJANGO_SETTINGS_MODULE="portal.settings.base", PORT=str(self.port),
            ETSI_HTTPS_PORT=str(self.etsi_port), QXAAS_DEMO="1", DATABASE_URL=backends.database_url,
            REDIS_URL=backends.redis_url, HEALTH_TOKEN="faults-health-token", API_RATE_LIMIT_PER_SECOND="1000",
            API_RATE_LIMIT_BURST="2000", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
            # A task of a worker killed outright is delivered again after the visibility timeout (which must
            # exceed the time limit): short here, so the test sees it within its time.
            CELERY_TASK_TIME_LIMIT="20", CELERY_TASK_SOFT_TIME_LIMIT="18", CELERY_VISIBILITY_TIMEOUT_S="25",
            # The twin on free ports (other test runs may hold madqci's defaults), light on the CPU.
            QKD_TWIN_ARGS=f"--base-port {free_port_range(3)} --mode statistical --time-scale 20 "
                          "--protocol-workers 0 --log-level WARNING")
        self.base, self.etsi = f"http://127.0.0.1:{self.port}", f"https://127.0.0.1:{self.etsi_port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / "stack.log"

    def manage(self, *args: str, module: str | None = None) -> str:
        cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, "manage.py", *args]
        result = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def stackctl(self, *args: str) -> dict:
        out = self.manage(*args, module="tests.faults.stackctl")
        return json.loads(next(line for line in out.splitlines() if line.startswith("STACKCTL "))[9:])

    def start(self) -> None:
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput", "-v0")
        self.manage("bootstrap_demo")
        self.token = (self.var / "demo-token").read_text().strip()
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "portal.runstack"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_BOUND_S
        while not (self.var / "demo-saes" / "demo-rect.key").exists() or not self.ready():
            assert self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, "the stack did not become ready:\n" + self.log_tail()
            time.sleep(0.5)
        self.lab_b = self.stackctl("setup", str(self.var / "b-saes"))

    def ready(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.base + "/readyz", timeout=3).status_code == 200
        return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 6000) -> str:
        return self.log_text()[-n:]

    def component(self, marker: str) -> int:
        """The pid of runstack's child whose command line contains ``marker``."""
        pids = [p for p in children(self.proc.pid) if marker in cmdline(p)]
        assert len(pids) == 1, (marker, [(p, cmdline(p)) for p in children(self.proc.pid)])
        return pids[0]

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Tenant:
    def __init__(self, slug: str, token: str, saes: Path, cait: str, rect: str) -> None:
        self.slug, self.token, self.cait, self.rect = slug, token, cait, rect
        self.cert = (str(saes / f"{cait}.crt"), str(saes / f"{cait}.key"))
        self.ca = str(saes / "ca.crt")


class Load:
    """Load threads and what their clients received."""

    def __init__(self, stack: Stack, tenants: list[Tenant]) -> None:
        self.stack, self.tenants = stack, tenants
        self.lock = threading.Lock()
        self.received: dict[str, list[str]] = {t.slug: [] for t in tenants}
        self.materials: set[str] = set()
        self.reused_material = 0
        self.outcomes: list[tuple[float, str, str]] = []  # (time, kind, outcome)
        self.stream_ok: dict[str, float] = {}
        self.streams: dict[str, str | None] = {t.slug: None for t in tenants}
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.idle = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []

    # -- the clients -------------------------------------------------------------------------------------
    def _keys(self, tenant: Tenant, keys: list[tuple[str, str]]) -> None:
        with self.lock:
            for key_id, material in keys:
                self.received[tenant.slug].append(key_id)
                if material in self.materials:
                    self.reused_material += 1
                self.materials.add(material)

    def _outcome(self, kind: str, response: requests.Response | None, error: str = "") -> str:
        if response is None:
            outcome = error
        else:
            outcome = str(response.status_code)
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                if kind.startswith("etsi004") and response.status_code == 200:
                    outcome += f" (status {response.json()['status']})"  # the ETSI 004 status
            if response.status_code >= 400:
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    body = response.json()
                    shape = "api" if "error" in body else "etsi" if "message" in body else "other"
                    outcome += f" ({shape})"
        with self.lock:
            self.outcomes.append((time.monotonic(), kind, outcome))
        return outcome

    def rest_key(self, tenant: Tenant, session: requests.Session) -> bool:
        r = session.get(self.stack.base + "/api/qkd/keys?src=CAIT&dst=Rectorado",
                        headers={"Authorization": f"Bearer {tenant.token}"}, timeout=10)
        self._outcome("rest key", r)
        if r.status_code == 200:
            body = r.json()
            self._keys(tenant, [(body["key_ID"], body["key"])])
        return r.status_code == 200

    def etsi014_keys(self, tenant: Tenant, session: requests.Session) -> bool:
        r = session.get(self.stack.etsi + f"/api/v1/keys/{tenant.rect}/enc_keys?number=2&size={KEY_BITS}",
                        cert=tenant.cert, verify=tenant.ca, timeout=10)
        self._outcome("etsi014 enc_keys", r)
        if r.status_code == 200:
            self._keys(tenant, [(k["key_ID"], k["key"]) for k in r.json()["keys"]])
        return r.status_code == 200

    def entropy(self, tenant: Tenant, session: requests.Session) -> bool:
        r = session.get(self.stack.base + "/api/entropy?bytes=32&format=hex",
                        headers={"Authorization": f"Bearer {tenant.token}"}, timeout=10)
        self._outcome("entropy", r)
        return r.status_code == 200

    def _etsi004(self, tenant: Tenant, session: requests.Session, sae: str, path: str, **kwargs) -> dict:
        headers = {"Authorization": f"Bearer {tenant.token}", "X-SAE-ID": sae}
        method = session.post if path != "get_key" else session.get
        r = method(self.stack.base + f"/api/etsi004/{path}", headers=headers, timeout=15, **kwargs)
        self._outcome(f"etsi004 {path}", r)
        try:
            body = r.json()
        except ValueError:
            body = {}
        return {"http": r.status_code, **(body if isinstance(body, dict) else {})}

    def stream_step(self, tenant: Tenant, session: requests.Session) -> bool:
        ksid = self.streams[tenant.slug]
        if ksid is None:
            body = {"source": f"sae://{tenant.cait}", "destination": f"sae://{tenant.rect}",
                    "QoS": {"Key_chunk_size": 32, "Max_bps": 4096, "Min_bps": 256, "TTL": 600, "Timeout": 2000}}
            opened = self._etsi004(tenant, session, tenant.cait, "open_connect", json=body)
            if opened.get("status") != 1:
                return False
            ksid = opened["Key_stream_ID"]
            joined = self._etsi004(tenant, session, tenant.rect, "open_connect", json={
                "source": f"sae://{tenant.rect}", "destination": f"sae://{tenant.cait}", "Key_stream_ID": ksid})
            if joined.get("status") != 0:
                self._etsi004(tenant, session, tenant.cait, "close", json={"Key_stream_ID": ksid})
                return False
            self.streams[tenant.slug] = ksid
        answer = self._etsi004(tenant, session, tenant.cait, "get_key", params={"Key_stream_ID": ksid})
        if answer.get("status") == 0 and answer.get("key_buffer"):
            with self.lock:
                self.stream_ok[tenant.slug] = time.monotonic()
            return True
        if answer.get("status") in (4, 6) or answer["http"] in (400, 404):  # ended (twin restart) or gone
            self.streams[tenant.slug] = None
        return False

    # -- running ---------------------------------------------------------------------------------------------
    def _loop(self, step, tenant: Tenant) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            if not self.running.is_set():
                self.idle.release()
                self.running.wait()
                continue
            try:
                step(tenant, session)
            except requests.RequestException as exc:
                kind = {"rest_key": "rest key", "etsi014_keys": "etsi014 enc_keys", "stream_step": "etsi004"}.get(
                    step.__name__, step.__name__)
                self._outcome(kind, None, f"connection error ({type(exc).__name__})")
                session.close()
                session = requests.Session()
                time.sleep(0.2)
            time.sleep(LOAD_PAUSE_S)
        session.close()

    def start(self) -> None:
        for tenant in self.tenants:
            for step in (self.rest_key, self.etsi014_keys, self.entropy, self.stream_step):
                thread = threading.Thread(target=self._loop, args=(step, tenant), daemon=True,
                                          name=f"{tenant.slug}-{step.__name__}")
                thread.start()
                self.threads.append(thread)

    def pause(self) -> None:
        """Every thread idle (its request finished): the ledger can be compared with what clients got."""
        self.running.clear()
        for _ in self.threads:
            assert self.idle.acquire(timeout=30), "a load thread did not finish its request"

    def resume(self) -> None:
        self.running.set()

    def finish(self) -> None:
        self.stop.set()
        self.running.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def seen_since(self, since: float) -> dict[str, dict[str, int]]:
        with self.lock:
            rows = [(kind, outcome) for t, kind, outcome in self.outcomes if t >= since]
        seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for kind, outcome in rows:
            seen[kind][outcome] += 1
        return {k: dict(v) for k, v in sorted(seen.items())}

    def probe(self, since: float) -> bool:
        """Every kind of request succeeds now (and each tenant's stream delivered a chunk since ``since``)."""
        session = requests.Session()
        try:
            ok = all(self.rest_key(t, session) and self.etsi014_keys(t, session) and self.entropy(t, session)
                     for t in self.tenants)
            with self.lock:
                streams = all(self.stream_ok.get(t.slug, 0) > since for t in self.tenants)
            ready = requests.get(self.stack.base + "/readyz", timeout=5).status_code == 200
            return ok and streams and ready
        except requests.RequestException:
            return False
        finally:
            session.close()


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="qxaas-faults."))
    backends = Backends(tmp)
    running = Stack(tmp, backends)
    try:
        backends.start()
        running.start()
        yield running
    finally:
        code = running.stop()
        backends.stop_redis()
        backends.stop_pg()
        if code not in (0, None):
            print(running.log_tail(), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_the_stack_heals_every_fault_and_loses_nothing(stack, capsys):
    demo = Tenant("demo-lab", stack.token, stack.var / "demo-saes", "demo-cait", "demo-rect")
    lab_b = Tenant("lab-b", stack.lab_b["token"], stack.var / "b-saes", "b-cait", "b-rect")
    load = Load(stack, [demo, lab_b])
    portal_cert = None

    def twin_admin(action: str) -> None:
        nonlocal portal_cert
        endpoints = json.loads((stack.var / "twin" / "endpoints.json").read_text())
        portal_cert = (endpoints["portal"]["cert"], endpoints["portal"]["key"])
        url = endpoints["nodes"]["CAIT"]["url"] + f"/api/v1/admin/links/cait-ccs/{action}"
        assert requests.post(url, cert=portal_cert, verify=endpoints["ca"], timeout=10).ok

    def gateway_child() -> int:
        return random.choice(children(stack.component("services.gateway")))

    def web_worker() -> int:
        return random.choice(children(stack.component("gunicorn")))

    report: dict = {}

    def kill_worker_during_a_report() -> None:
        """A quality report (a Celery job) running when the worker dies must be delivered again and done."""
        auth = {"Authorization": f"Bearer {demo.token}"}
        r = requests.post(stack.base + "/api/entropy/quality-reports/", json={"bytes": REPORT_BYTES},
                          headers=auth, timeout=10)
        assert r.status_code in (201, 202), r.text
        report["url"] = stack.base + f"/api/entropy/quality-reports/{r.json()['id']}/"
        deadline = time.monotonic() + 30
        while (state := requests.get(report["url"], headers=auth, timeout=10).json()["state"]) == "queued":
            assert time.monotonic() < deadline, "the quality report never started"
            time.sleep(0.1)
        assert state == "running", f"the report was {state} before the worker could be killed: make it larger"
        kill(stack.component("-Q quality"))  # reports run on their own queue and worker
        report["killed_at"] = time.monotonic()

    def report_done_after_redelivery() -> float:
        auth = {"Authorization": f"Bearer {demo.token}"}
        deadline = time.monotonic() + 90
        while (body := requests.get(report["url"], headers=auth, timeout=10).json())["state"] != "done":
            assert body["state"] in ("running", "queued"), body
            assert time.monotonic() < deadline, f"the quality report was not delivered again: {body}"
            time.sleep(0.5)
        return time.monotonic() - report["killed_at"]

    readiness_seen: dict[str, list[str]] = {}

    def readyz_while_down(fault: str, dependency: str) -> None:
        """/readyz tells the truth while it is down: 503 and a stable code for anyone, which dependency for
        operators (the health token)."""
        anonymous = requests.get(stack.base + "/readyz", timeout=10)
        assert anonymous.status_code == 503 and anonymous.json() == {"status": "unavailable", "code": "not_ready"}
        operator = requests.get(stack.base + "/readyz", headers={"Authorization": "Bearer faults-health-token"},
                                timeout=10)
        down = sorted(name for name, check in operator.json()["checks"].items() if not check["ok"])
        assert operator.status_code == 503 and dependency in down, operator.text
        readiness_seen[fault] = down

    def restart_pg() -> None:
        stack.backends.stop_pg("immediate")
        readyz_while_down("restart PostgreSQL", "database")
        time.sleep(0.5)
        stack.backends.start_pg()

    def restart_redis() -> None:
        stack.backends.stop_redis()
        readyz_while_down("restart Redis", "cache")
        time.sleep(0.5)
        stack.backends.start_redis()

    def cut_link() -> None:
        twin_admin("cut")
        time.sleep(3.0)
        twin_admin("restore")

    # (name, inject, log line naming the restart or None, may cut requests after their commit)
    faults = [
        ("kill -9 twin", lambda: kill(stack.component("services.sdqkd.twin")), "restarted twin", False),
        ("kill -9 Celery worker (main process)", kill_worker_during_a_report, "restarted worker", False),
        ("kill -9 one key-gateway process", lambda: kill(gateway_child()), "started in place of a dead one", True),
        ("kill -9 one web worker", lambda: kill(web_worker()), "Booting worker", True),
        ("restart PostgreSQL", restart_pg, None, True),
        ("restart Redis", restart_redis, None, False),
        ("cut the twin link cait-ccs for 3 s", cut_link, None, False),
    ]
    load.start()
    results = []
    try:
        deadline = time.monotonic() + STARTUP_BOUND_S
        while not load.probe(0):  # the streams open and every kind of request works before the first fault
            assert time.monotonic() < deadline, "the load never ran cleanly:\n" + json.dumps(load.seen_since(0))
            time.sleep(0.5)
        last_charged = {t.slug: 0 for t in load.tenants}
        for name, inject, restart_line, cuts_requests in faults:
            log_from = len(stack.log_text())
            t0 = time.monotonic()
            inject()
            injected = time.monotonic()
            time.sleep(0.5)
            while not load.probe(injected):
                assert time.monotonic() - t0 < RECOVERY_BOUND_S, (
                    f"{name}: not healed within {RECOVERY_BOUND_S} s; clients saw "
                    f"{json.dumps(load.seen_since(t0))}\n{stack.log_tail()}")
                time.sleep(0.25)
            recovery = time.monotonic() - t0
            seen = load.seen_since(t0)
            if "Celery" in name:
                report["redelivered_done_s"] = round(report_done_after_redelivery(), 1)
            load.pause()
            try:
                (stack.tmp / "received.json").write_text(json.dumps(load.received))
                ledger = stack.stackctl("check", str(stack.tmp / "received.json"))
            finally:
                load.resume()
            charged = {slug: row["charged_not_received_bits"] for slug, row in ledger.items()}
            results.append({"fault": name, "recovery_s": round(recovery, 1), "clients_saw": seen,
                            "charged_not_received_bits": {s: charged[s] - last_charged[s] for s in charged}})
            for slug, row in ledger.items():
                assert row["unknown_count"] == 0, (name, slug, row)  # a key no delivery record knows
                assert row["handed_twice"] == 0, (name, slug, row)
                assert row["consume_rows"] == row["delivery_rows"], (name, slug, row)
                assert row["consumed_bits"] == row["delivered_bits"], (name, slug, row)
                assert row["counter_mismatches"] == [], (name, slug, row)
                assert row["stream_slots_used"] == row["live_streams"], (name, slug, row)
                assert row["charged_not_received_bits"] >= 0, (name, slug, row)
                if not cuts_requests:
                    assert charged[slug] == last_charged[slug], (name, slug, row)
            assert load.reused_material == 0, name
            if restart_line is not None:
                assert restart_line in stack.log_text()[log_from:], (name, stack.log_tail())
            last_charged = charged
        assert stack.proc.poll() is None  # the supervisor never gave up
    finally:
        load.finish()
        with capsys.disabled():
            print("\n== fault injection: recovery (injection to every kind of request served again)")
            for row in results:
                print(f"{row['fault']:<40} back in {row['recovery_s']:>5.1f} s; charged, not received: "
                      f"{row['charged_not_received_bits']}")
                for kind, outcomes in row["clients_saw"].items():
                    print(f"    {kind:<22} {outcomes}")
            for fault, down in readiness_seen.items():
                print(f"/readyz during '{fault}': 503 not_ready; operators see down: {down}")
            if "redelivered_done_s" in report:
                print(f"the quality report running when the worker was killed: delivered again and done "
                      f"{report['redelivered_done_s']} s after the kill (visibility timeout 25 s in this test)")
    # Closing the streams releases every slot.
    session = requests.Session()
    for tenant in load.tenants:
        if load.streams[tenant.slug]:
            load._etsi004(tenant, session, tenant.cait, "close", json={"Key_stream_ID": load.streams[tenant.slug]})
    final = stack.stackctl("check", str(stack.tmp / "received.json"))
    for slug, row in final.items():
        assert row["live_streams"] == 0 and row["stream_slots_used"] == 0, (slug, row)
    assert stack.stop() == 0
    assert "crash-looping" not in stack.log_text()
