"""Shared harness of the gateway benchmarks: a twin, a portal (the key gateway, as ``portal/runstack.py`` starts it) on
a temporary var dir and database, tenants and SAEs made through the portal's own services, and an aiohttp
load generator. Everything runs on 127.0.0.1 and is stopped on exit.

Not a benchmark by itself: ``bench/gateway_overhead.py`` and ``bench/gateway_concurrency.py`` use it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
MAX_REQUESTS_PER_WORKER = 1_000_000  # a bound on every load loop besides its time limit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# --- the database -----------------------------------------------------------------------------------------
class TemporaryDatabase:
    """A fresh PostgreSQL database next to the one DATABASE_URL names (dropped afterwards), else SQLite."""

    def __init__(self, var_dir: Path) -> None:
        self.server_url = os.environ.get("DATABASE_URL", "")
        self.name = f"qxaas_bench_{os.getpid()}_{secrets.token_hex(3)}"
        if self.server_url.startswith(("postgres://", "postgresql://")):
            self.vendor = "postgresql"
            parts = urlsplit(self.server_url)
            self.url = urlunsplit(parts._replace(path="/" + self.name))
            self._admin("CREATE DATABASE {}")
        else:
            self.vendor = "sqlite"
            self.url = f"sqlite:///{var_dir / 'bench.sqlite3'}"

    def _admin(self, statement: str) -> None:
        import psycopg
        from psycopg import sql

        parts = urlsplit(self.server_url)
        conninfo = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(self.name)))

    def drop(self) -> None:
        if self.vendor == "postgresql":
            from django.db import connections

            connections.close_all()
            self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")


# --- the twin ---------------------------------------------------------------------------------------------
def start_twin(state: Path, time_scale: float) -> tuple[subprocess.Popen, dict]:
    log = (state.parent / "twin.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.sdqkd.twin", "--topology", "madqci", "--state-dir", str(state),
         "--base-port", "0", "--time-scale", str(time_scale), "--log-level", "WARNING"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (state / "endpoints.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise SystemExit("the twin did not start; see " + str(state.parent / "twin.log"))
        time.sleep(0.02)
    return proc, json.loads((state / "endpoints.json").read_text())


# --- the portal -------------------------------------------------------------------------------------------
@dataclass
class SaeCredentials:
    tenant: str
    name: str
    node: str
    cert: str
    key: str


@dataclass
class Portal:
    """What the bench needs to talk to a running portal."""

    base_url: str
    ca: str
    saes: dict[str, SaeCredentials] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None


def setup_django(var_dir: Path, db_url: str, twin_state: Path) -> None:
    os.environ.update({
        "QXAAS_VAR_DIR": str(var_dir), "DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "portal.settings.base",
        "QKD_AUTO_REGISTER_TWIN": "false", "QKD_TWIN_STATE_DIR": str(twin_state), "LOG_LEVEL": "WARNING",
    })
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def make_tenants(endpoints: dict, tenants: dict[str, list[tuple[str, str]]], key_bits_per_day: int,
                 out_dir: Path) -> dict[str, SaeCredentials]:
    """Register the twin, then for each tenant slug its SAEs ``(name, node)`` with certificate bundles, all
    through the portal's services (the same code the API calls)."""
    from django.contrib.auth import get_user_model

    from services import registry, saes
    from tenants.meters import METERS
    from tenants.models import Membership, Plan, Role, Tenant
    from tenants.services import set_plan_limits

    registry.register_twin(endpoints)
    plan = Plan.objects.create(name="Bench", slug="bench")
    limits = {k: -1 for m in METERS.values() for k in m.quota_keys}
    limits.update({"qkd_key_bits.day": key_bits_per_day, "qkd_key_bits.month": -1})
    set_plan_limits(plan, limits)
    out: dict[str, SaeCredentials] = {}
    for slug, sae_list in tenants.items():
        tenant = Tenant.objects.create(name=slug.title(), slug=slug, plan=plan)
        user = get_user_model().objects.create_user(f"{slug}-owner", f"{slug}@example.org", secrets.token_hex(16))
        Membership.objects.create(tenant=tenant, user=user, role=Role.OWNER)
        for name, node in sae_list:
            bundle = saes.register_sae(tenant, name, node)
            cert, key = out_dir / f"{name}.crt", out_dir / f"{name}.key"
            cert.write_text(bundle.certificate + bundle.ca_chain)
            key.write_text(bundle.private_key)
            key.chmod(0o600)
            out[name] = SaeCredentials(slug, name, node, str(cert), str(key))
    return out


def start_portal(var_dir: Path, db_url: str, workers: int, threads: int) -> Portal:
    """The ETSI 014 HTTPS listener exactly as ``portal.runstack.etsi_https_command`` builds it (mTLS with SAE
    certificates), with the worker/thread counts given."""
    from django.db import connections

    from portal.runstack import etsi_https_command
    from services import pki

    connections.close_all()
    port = free_port()
    cmd = [*etsi_https_command(port, workers=workers), "--threads", str(threads)]
    env = {**os.environ, "DATABASE_URL": db_url, "QXAAS_VAR_DIR": str(var_dir), "QKD_AUTO_REGISTER_TWIN": "false",
           "DJANGO_SETTINGS_MODULE": "portal.settings.base", "LOG_LEVEL": "WARNING"}
    log_path = var_dir / "gateway.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ca = str(pki.pki_dir() / "ca.crt")
    portal = Portal(f"https://127.0.0.1:{port}", ca, process=proc, log_path=log_path)
    ctx = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /gateway/healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                if tls.recv(64).split(b" ")[1:2] == [b"200"]:
                    return portal
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise SystemExit("the portal did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.2)


def add_portal_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every gateway benchmark takes: the key gateway's size, the twin's speed, a JSON copy."""
    parser.add_argument("--workers", type=int, default=2, help="key gateway processes (runstack: 2)")
    parser.add_argument("--threads", type=int, default=8, help="database threads per process (runstack: 8)")
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--json", type=Path, help="also write the results here")


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- load -------------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    requests: int
    errors: int
    keys: int
    key_bits: int
    seconds: float
    latencies: list[float]
    error_samples: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds

    @property
    def mbit_per_s(self) -> float:
        return self.key_bits / self.seconds / 1e6


async def run_for(one: Callable[[], Awaitable[None]], clients: int, seconds: float,
                  max_requests: int = MAX_REQUESTS_PER_WORKER) -> float:
    """``clients`` workers awaiting ``one()`` back to back until ``seconds`` are up; returns the elapsed time."""
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        for _ in range(max_requests):
            if time.perf_counter() >= stop:
                return
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0


async def run_load(url: str, ctx: ssl.SSLContext, clients: int, seconds: float, body: dict,
                   headers: dict[str, str] | None = None, max_requests: int = MAX_REQUESTS_PER_WORKER) -> LoadResult:
    """``clients`` keep-alive connections POSTing ``body`` back to back for ``seconds`` (after a warm-up)."""
    size = int(body.get("size", 256))
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "keys": 0}
    samples: list[str] = []
    connector = aiohttp.TCPConnector(ssl=ctx, limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        async def one() -> None:
            t0 = time.perf_counter()
            async with session.post(url, json=body) as response:
                data = await response.read()
            latencies.append(time.perf_counter() - t0)
            counts["requests"] += 1
            if response.status == 200:
                counts["keys"] += data.count(b'"key_ID"')
            else:
                counts["errors"] += 1
                if len(samples) < 3:
                    samples.append(f"{response.status} {data[:200]!r}")

        for _ in range(2):  # warm-up: connections, TLS handshakes, caches
            await asyncio.gather(*(one() for _ in range(clients)))
        latencies.clear()
        counts.update(requests=0, errors=0, keys=0)
        elapsed = await run_for(one, clients, seconds, max_requests)
    return LoadResult(counts["requests"], counts["errors"], counts["keys"], counts["keys"] * size, elapsed, latencies,
                      samples)


class Bench(ExitStack):
    """A temporary directory, twin, database and portal; everything is stopped and removed on exit."""

    def __init__(self, time_scale: float, workers: int, threads: int,
                 tenants: dict[str, list[tuple[str, str]]], key_bits_per_day: int) -> None:
        super().__init__()
        self.args = (time_scale, workers, threads, tenants, key_bits_per_day)

    def __enter__(self) -> Bench:
        super().__enter__()
        try:
            return self._start()
        except BaseException:
            self.close()  # a failed start must not leave a twin, a portal or a database behind
            raise

    def _start(self) -> Bench:
        # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the exit stack still stops every process
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        time_scale, workers, threads, tenants, key_bits_per_day = self.args
        self.tmp = Path(self.enter_context(tempfile.TemporaryDirectory(prefix="qxaas-gwbench-")))
        self.var_dir = self.tmp / "var"
        self.var_dir.mkdir()
        twin_state = self.tmp / "twin"
        self.twin_proc, self.endpoints = start_twin(twin_state, time_scale)
        self.callback(stop_process, self.twin_proc)
        self.db = TemporaryDatabase(self.var_dir)
        self.callback(self.db.drop)
        setup_django(self.var_dir, self.db.url, twin_state)
        creds = self.tmp / "creds"
        creds.mkdir()
        self.saes = make_tenants(self.endpoints, tenants, key_bits_per_day, creds)
        self.portal = start_portal(self.var_dir, self.db.url, workers, threads)
        self.callback(stop_process, self.portal.process)
        self.portal.saes = self.saes
        return self

    # -- addresses ----------------------------------------------------------------------------------------
    def direct(self, backend_master: str, backend_slave: str, call: str = "enc_keys") -> tuple[str, ssl.SSLContext]:
        """A backend SAE's own ETSI 014 URL at its KME, with its twin-issued client certificate."""
        node = self.endpoints["saes"][backend_master]["node"]
        url = f"{self.endpoints['nodes'][node]['url']}/api/v1/keys/{backend_slave}/{call}"
        entry = self.endpoints["saes"][backend_master]
        return url, tls_context(self.endpoints["ca"], entry["cert"], entry["key"])

    def bare_proxy(self, backend_master: str, backend_slave: str, call: str = "enc_keys") -> tuple[str, ssl.SSLContext]:
        """``enc_keys`` (or ``dec_keys``, ``backend_master`` then being the slave) through ``bench/bare_proxy.py``
        (one more hop, none of the gateway's work): as many processes on one port as the portal's gateway has
        workers, started once per backend SAE and stopped on exit."""
        from services import pki

        proxies = self.__dict__.setdefault("_bare_proxies", {})
        if backend_master not in proxies:
            node = self.endpoints["saes"][backend_master]["node"]
            entry = self.endpoints["saes"][backend_master]
            cert, key = pki.server_certificate()
            port = free_port()
            for _ in range(self.args[1]):  # the portal's gateway processes
                proc = subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "bare_proxy.py"), "--port", str(port),
                     "--kme", self.endpoints["nodes"][node]["url"], "--master", backend_master, "--cert",
                     entry["cert"], "--key", entry["key"], "--ca", self.endpoints["ca"], "--server-cert", str(cert),
                     "--server-key", str(key)], cwd=REPO)
                self.callback(stop_process, proc)
            ctx = ssl.create_default_context(cafile=self.portal.ca)
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                            ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the bare proxy did not start") from None
                    time.sleep(0.1)
            proxies[backend_master] = (f"https://127.0.0.1:{port}", ctx)
        base, ctx = proxies[backend_master]
        return f"{base}/api/v1/keys/{backend_slave}/{call}", ctx

    def through_portal(self, master: str, slave: str, call: str = "enc_keys") -> tuple[str, ssl.SSLContext]:
        """A tenant SAE's ETSI 014 URL at the portal, with its portal-issued client certificate."""
        sae = self.saes[master]
        return f"{self.portal.base_url}/api/v1/keys/{slave}/{call}", tls_context(self.portal.ca, sae.cert, sae.key)

    def describe(self) -> dict[str, Any]:
        _, workers, threads, _, _ = self.args
        return {"database": self.db.vendor, "portal_listener": "key gateway HTTPS mTLS (etsi_https_command)",
                "workers": workers, "threads": threads, "cpus": os.cpu_count()}
