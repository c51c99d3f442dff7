"""Scale-out: the same load on 1 then 2 web processes and 1 then 2 key-gateway processes, against one PostgreSQL and
one Redis, with 2 Celery workers and beat; afterwards every tenant's quotas must equal its usage ledger exactly.

Load (concurrent, for ``--seconds`` per phase), for each of ``--tenants`` tenants, each with an SAE at CAIT and
one at CCS (one link apart):
  - 2 ETSI 014 clients through the key gateway (mutual TLS): enc_keys as the master, then dec_keys as the slave;
  - 1 client of the simple REST key API (``/api/qkd/keys``, token) on the web listener;
  - 1 entropy client (``/api/entropy?bytes=256``) on the web listener (the shared Redis pool, filled by beat);
  - 1 ETSI 004 client on the web listener: open a stream, join it from the peer SAE, read chunks from both
    sides, close; streams are prefilled by the Celery workers and their seconds metered by beat's job.
Reported: successful operations per second by kind and in total for each phase, p50/p99 latencies, errors,
and the ratio phase 2 / phase 1 (the baseline measured in the same run). Then, for each tenant and quota key:
the quota counter == the sum of its ledger rows in the window; no stream left open (key_streams back to 0).

    .venv/bin/python bench/scale_out.py [--seconds 12] [--rounds 2] [--tenants 4]   (make bench ONLY=scale_out)

Needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL: scripts/bench.sh starts them); a temporary database is
created and dropped. Everything listens on 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from gateway_common import (
    REPO,
    START_TIMEOUT_S,
    TemporaryDatabase,
    free_port,
    make_tenants,
    percentile,
    setup_django,
    start_twin,
    stop_process,
    tls_context,
)

KEY_BITS = 256
STREAM_CHUNKS = 4  # chunks each side reads before closing a stream
MAX_OPS_PER_CLIENT = 100_000  # a bound on every loop besides its time limit


@dataclass
class Stats:
    ok: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: list[str] = field(default_factory=list)

    def record(self, kind: str, status: int, started: float, body: bytes = b"") -> bool:
        self.latencies[kind].append(time.perf_counter() - started)
        if status == 200:
            self.ok[kind] += 1
            return True
        self.errors[kind] += 1
        if sum(sample.startswith(kind + " ") for sample in self.samples) < 2:  # the first two of each kind
            self.samples.append(f"{kind} {status} {body[:160]!r}")
        return False


@dataclass
class Tenant:
    slug: str
    token: str
    master_ctx: ssl.SSLContext
    slave_ctx: ssl.SSLContext


def env_for(db_url: str, var_dir: Path, twin_state: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "QXAAS_VAR_DIR": str(var_dir), "QKD_AUTO_REGISTER_TWIN": "false",
            "QKD_TWIN_STATE_DIR": str(twin_state), "DJANGO_SETTINGS_MODULE": "portal.settings.base",
            "LOG_LEVEL": "WARNING",
            # The per-token request buckets would cap the load at 20 requests/s per tenant: this measures the
            # processes, so they are off (quotas stay on and are what the check at the end is about).
            "API_RATE_LIMIT_PER_SECOND": "0", "KEY_DELIVERY_RATE_LIMIT_PER_SECOND": "0", **extra}


def wait_http(url: str, proc: subprocess.Popen, log: Path, ctx: ssl.SSLContext | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)


class Listeners(ExitStack):
    """gunicorn with ``processes`` workers and the key gateway with ``processes`` processes."""

    def __init__(self, env: dict[str, str], var_dir: Path, processes: int, ca: str) -> None:
        super().__init__()
        self.env, self.var_dir, self.processes, self.ca = env, var_dir, processes, ca

    def __enter__(self) -> Listeners:
        super().__enter__()
        from portal.runstack import GUNICORN_CONFIG, etsi_https_command

        web_port, port = free_port(), free_port()
        self.web, self.base = f"http://127.0.0.1:{web_port}", f"https://127.0.0.1:{port}"
        log = self.var_dir / f"listeners-{self.processes}.log"
        with log.open("w") as out:
            web = subprocess.Popen([sys.executable, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{web_port}",
                                    "--workers", str(self.processes), "--threads", "4", "--config", GUNICORN_CONFIG],
                                   cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            self.callback(stop_process, web)
            gateway = subprocess.Popen(etsi_https_command(port, workers=self.processes, upstream=self.web),
                                       cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            self.callback(stop_process, gateway)
        wait_http(self.web + "/healthz", web, log)
        wait_http(self.base + "/gateway/healthz", gateway, log, ssl.create_default_context(cafile=self.ca))
        return self


async def etsi014_client(t: Tenant, base: str, stop: float, stats: Stats) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=t.master_ctx, limit=1),
                                     timeout=timeout) as master, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=t.slave_ctx, limit=1), timeout=timeout) as slave:
        for _ in range(MAX_OPS_PER_CLIENT):
            if time.perf_counter() >= stop:
                return
            t0 = time.perf_counter()
            async with master.post(f"{base}/api/v1/keys/{t.slug}-ccs/enc_keys",
                                   json={"number": 1, "size": KEY_BITS}) as r:
                body = await r.read()
            if not stats.record("etsi014_enc", r.status, t0, body):
                continue
            key_id = json.loads(body)["keys"][0]["key_ID"]
            t0 = time.perf_counter()
            async with slave.post(f"{base}/api/v1/keys/{t.slug}-cait/dec_keys",
                                  json={"key_IDs": [{"key_ID": key_id}]}) as r:
                stats.record("etsi014_dec", r.status, t0, await r.read())


async def get_client(kind: str, url: str, token: str, stop: float, stats: Stats) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(MAX_OPS_PER_CLIENT):
            if time.perf_counter() >= stop:
                return
            t0 = time.perf_counter()
            async with session.get(url) as r:
                body = await r.read()
            stats.record(kind, r.status, t0, body)
            if r.status == 503:  # an empty entropy pool or a drained link: back off like a client would
                await asyncio.sleep(0.2)


async def stream_client(t: Tenant, web: str, stop: float, stats: Stats) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {t.token}"},
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def call(kind: str, sae: str, op: str, body: dict, accept: tuple[int, ...] = (0,)) -> dict | None:
            t0 = time.perf_counter()
            async with session.post(f"{web}/api/etsi004/{op}", json=body, headers={"X-SAE-ID": sae}) as r:
                raw = await r.read()
            ok = stats.record(kind, r.status, t0, raw)
            answer = json.loads(raw) if ok else None
            if answer is not None and answer.get("status", 0) not in accept:  # ETSI 004's own refusals
                stats.ok[kind] -= 1
                stats.record(kind, 599, t0, raw)
                return None
            return answer

        src, dst = f"{t.slug}-cait", f"{t.slug}-ccs"
        qos = {"Key_chunk_size": 32, "Max_bps": 65536, "Min_bps": 256, "TTL": 600}
        for _ in range(MAX_OPS_PER_CLIENT):
            if time.perf_counter() >= stop:
                return
            # status 1 (PEER_NOT_CONNECTED) is the opener's normal answer: the peer joins next
            opened = await call("etsi004_open", src, "open_connect",
                                {"source": f"sae://{src}", "destination": f"sae://{dst}", "QoS": qos}, (0, 1))
            if opened is None:
                await asyncio.sleep(0.2)
                continue
            ksid = opened["Key_stream_ID"]
            try:
                if await call("etsi004_open", dst, "open_connect", {"source": f"sae://{dst}",
                              "destination": f"sae://{src}", "QoS": qos, "Key_stream_ID": ksid}) is None:
                    continue
                for index in range(STREAM_CHUNKS):
                    for sae in (src, dst):
                        await call("etsi004_get_key", sae, "get_key", {"Key_stream_ID": ksid, "index": index})
            finally:
                await call("etsi004_close", src, "close", {"Key_stream_ID": ksid})


async def load(tenants: list[Tenant], listeners: Listeners, seconds: float) -> tuple[Stats, float]:
    stats = Stats()
    stop = time.perf_counter() + seconds
    web = listeners.web
    jobs = []
    for t in tenants:
        jobs += [etsi014_client(t, listeners.base, stop, stats) for _ in range(2)]
        jobs.append(get_client("rest_key", f"{web}/api/qkd/keys?src=CAIT&dst=CCS&size={KEY_BITS}", t.token, stop,
                               stats))
        jobs.append(get_client("entropy", f"{web}/api/entropy?bytes=256&format=hex", t.token, stop, stats))
        jobs.append(stream_client(t, web, stop, stats))
    t0 = time.perf_counter()
    await asyncio.gather(*jobs)
    return stats, time.perf_counter() - t0


def summary(stats: Stats, elapsed: float) -> dict:
    kinds = sorted(set(stats.ok) | set(stats.errors))
    out = {"seconds": round(elapsed, 2), "ops_per_s": round(sum(stats.ok.values()) / elapsed, 1),
           "errors": sum(stats.errors.values()), "error_samples": stats.samples, "by_kind": {}}
    for kind in kinds:
        lat = stats.latencies[kind]
        out["by_kind"][kind] = {"ok_per_s": round(stats.ok[kind] / elapsed, 1), "errors": stats.errors[kind],
                                "p50_ms": round(percentile(lat, 0.5) * 1000, 1),
                                "p99_ms": round(percentile(lat, 0.99) * 1000, 1)}
    return out


def ledger_check() -> list[dict]:
    """For every tenant and quota key: the counter of the current window == its ledger rows in that window."""
    from django.db.models import Sum
    from django.utils import timezone

    from services.models import KeyStream
    from tenants import quota
    from tenants.meters import window_bounds
    from tenants.models import Tenant as TenantModel
    from tenants.models import UsageRecord

    now = timezone.now()
    rows = []
    for tenant in TenantModel.objects.order_by("slug"):
        for state in quota.quota_states(tenant, at=now):
            start, end = window_bounds(state.window, now)
            records = UsageRecord.objects.for_tenant(tenant).filter(meter=state.meter, created_at__gte=start)
            if end is not None:
                records = records.filter(created_at__lt=end)
            ledger = records.aggregate(n=Sum("quantity"))["n"] or 0  # releases are negative rows
            rows.append({"tenant": tenant.slug, "quota": state.quota_key, "counter": state.used, "ledger": ledger,
                         "exact": state.used == ledger})
        live = KeyStream.objects.for_tenant(tenant).filter(state__in=list(KeyStream.live_states)).count()
        seconds = UsageRecord.objects.for_tenant(tenant).filter(meter="key_stream_seconds").aggregate(
            n=Sum("quantity"))["n"] or 0
        rows.append({"tenant": tenant.slug, "quota": "live key streams", "counter": live, "ledger": 0,
                     "exact": live == 0, "stream_seconds_metered": seconds})
    return rows


def wait_for_workers(redis_url: str, max_seconds: float = 60.0) -> None:
    """Let the workers drain the queue (stream closes enqueue backend closes) before the ledger is read."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + max_seconds
    while client.llen("celery") and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # one more beat period of order maintenance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="load per phase")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of phases (1 then 2 processes)")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=200.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    db_server, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not db_server.startswith(("postgres://", "postgresql://")) or not redis_url:
        raise SystemExit("scale_out needs PostgreSQL and Redis: DATABASE_URL and REDIS_URL (make bench starts them)")
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qxaas-scaleout-")))
        var_dir, twin_state = tmp / "var", tmp / "twin"
        var_dir.mkdir()
        twin, endpoints = start_twin(twin_state, args.time_scale)
        stack.callback(stop_process, twin)
        db = TemporaryDatabase(var_dir)
        stack.callback(db.drop)
        setup_django(var_dir, db.url, twin_state)
        creds = tmp / "creds"
        creds.mkdir()
        slugs = [f"s{i:02d}" for i in range(args.tenants)]
        saes = make_tenants(endpoints, {s: [(f"{s}-cait", "CAIT"), (f"{s}-ccs", "CCS")] for s in slugs},
                            key_bits_per_day=-1, out_dir=creds)
        from django.contrib.auth import get_user_model
        from django.db import connections

        from services import pki
        from tenants.meters import QUOTA_KEYS
        from tenants.models import Plan
        from tenants.models import Tenant as TenantModel
        from tenants.services import set_plan_limits
        from tenants.tokens import issue_token

        # Unlimited, so the load is not cut short; the counters still count, and are checked against the ledger.
        set_plan_limits(Plan.objects.get(slug="bench"), {**dict.fromkeys(QUOTA_KEYS, -1), "key_streams": 2})
        ca = str(pki.pki_dir() / "ca.crt")
        pki.server_certificate()
        tenants = []
        for slug in slugs:
            model = TenantModel.objects.get(slug=slug)
            _, secret = issue_token(get_user_model().objects.get(username=f"{slug}-owner"), model, "bench",
                                    ["keys:read", "keys:write", "entropy:read"])
            m, s = saes[f"{slug}-cait"], saes[f"{slug}-ccs"]
            tenants.append(Tenant(slug, secret, tls_context(ca, m.cert, m.key), tls_context(ca, s.cert, s.key)))
        connections.close_all()
        env = env_for(db.url, var_dir, twin_state)
        log = (var_dir / "celery.log").open("w")
        stack.callback(log.close)
        for name in ("w1", "w2"):
            worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "portal", "worker", "-n", f"{name}@%h",
                                       "--concurrency", "1", "--loglevel", "WARNING"], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
            stack.callback(stop_process, worker, 30.0)
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "portal", "beat", "--loglevel", "WARNING",
                                 "--schedule", str(var_dir / "beat-schedule")], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        stack.callback(stop_process, beat)

        results = {"tenants": args.tenants, "seconds_per_phase": args.seconds, "rounds": args.rounds,
                   "cpus": os.cpu_count(), "phases": []}
        # Rounds alternate 1, 2, 1, 2...: on a shared machine the load of other work drifts, and alternating
        # puts both sizes under the same drift. Each round's pair gives a ratio; the report is their median and
        # the ratio of the summed throughputs.
        for round_no in range(args.rounds):
            for processes in (1, 2):
                with Listeners(env, var_dir, processes, ca) as listeners:
                    asyncio.run(load(tenants, listeners, 2.0))  # warm-up: connections, imports, prepared statements
                    load_before = os.getloadavg()[0]
                    stats, elapsed = asyncio.run(load(tenants, listeners, args.seconds))
                phase = {"round": round_no + 1, "processes": processes, **summary(stats, elapsed),
                         # the machine's 1-minute load average around the phase (2 cores: above ~2 means other work)
                         "loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
                results["phases"].append(phase)
                print(f"round {round_no + 1}: {processes} web + {processes} gateway process(es): {json.dumps(phase)}",
                      flush=True)
        by_size = {n: [p for p in results["phases"] if p["processes"] == n] for n in (1, 2)}
        pairs = [two["ops_per_s"] / one["ops_per_s"] for one, two in zip(by_size[1], by_size[2], strict=True)
                 if one["ops_per_s"]]
        results["ratio_per_round"] = [round(r, 2) for r in pairs]
        results["ratio_2_vs_1_median"] = round(statistics.median(pairs), 2) if pairs else None
        total = {n: sum(p["ops_per_s"] for p in by_size[n]) for n in (1, 2)}
        results["ratio_2_vs_1"] = round(total[2] / total[1], 2) if total[1] else None
        kinds = {k for p in results["phases"] for k in p["by_kind"]}
        results["ratio_by_kind"] = {}
        for kind in sorted(kinds):
            rate = {n: sum(p["by_kind"].get(kind, {}).get("ok_per_s", 0) for p in by_size[n]) for n in (1, 2)}
            if rate[1]:
                results["ratio_by_kind"][kind] = round(rate[2] / rate[1], 2)
        wait_for_workers(redis_url)
        rows = ledger_check()
        results["ledger"] = {"checked": len(rows), "exact": all(r["exact"] for r in rows),
                             "mismatches": [r for r in rows if not r["exact"]],
                             "stream_seconds_metered": sum(r.get("stream_seconds_metered", 0) for r in rows)}
        print(f"ratio 2 vs 1 processes (total successful ops/s): {results['ratio_2_vs_1']} (per round "
              f"{results['ratio_per_round']}, median {results['ratio_2_vs_1_median']}); by kind: "
              f"{json.dumps(results['ratio_by_kind'])}")
        print(f"quota counters == ledger for {len(rows)} tenant/quota pairs: {results['ledger']['exact']}"
              f"{'' if results['ledger']['exact'] else ' ' + json.dumps(results['ledger']['mismatches'])}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0 if results["ledger"]["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
