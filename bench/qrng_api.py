"""Benchmark: a 64 MiB raw entropy request through the API (gunicorn over loopback, health tests on) vs reading
the same source directly, in the same run.

    .venv/bin/python bench/qrng_api.py [--mib 64] [--rounds 5] [--device /dev/urandom] [--workers 1]
                                       [--no-filler] [--pool-mib 16]

A throwaway portal (SQLite in a temporary var dir, no Redis: the per-process local pool, so the request reads
through the SP 800-90B health-tested source, the serial worst case) serves ``GET /api/entropy?format=raw``
from gunicorn as ``make run`` starts it; the source is ``--device`` (/dev/urandom stands in for a PCIe QRNG's
character device). curl downloads to /dev/null and reports size and total time (connection included).
"direct" reads the device in 1 MiB chunks with ``DeviceSource`` in this process, no health tests. Each API
round is paired with a direct read just before it; medians of rates and of per-pair ratios are reported.
A warm-up request (1 MiB) builds the service and runs the start-up test before timing.

By default the web process runs its pool filler thread (``QRNG_POOL_FILLER_THREAD``, on in ``make run``): the pool
(``--pool-mib``, default 16 MiB) is full when a request arrives, and the device read overlaps the socket
writes. Each pair starts once the filler is idle again (polled on the capabilities endpoint), so it never
runs beside the direct read. A full pool flatters the ratio (part of the response was read before the
clock started): ``--pool-mib 2`` shows the overlap alone; ``--no-filler`` the serial read-through path.

Goals: >= 1 Gbit/s through the API and a ratio >= 0.8 of the direct read. The machine has 2 cores shared with
other work (curl, gunicorn and the device read compete for them), so the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import CHUNK, direct  # noqa: E402

SETUP = """
from tenants.demo import bootstrap_demo
from tenants.models import Plan, Tenant
creds = bootstrap_demo()
Tenant.objects.filter(slug=creds.tenant).update(plan=Plan.objects.get(slug="unlimited"))
print("TOKEN=" + creds.token)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_api(url: str, token: str, n: int) -> float:
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {token}", f"{url}/api/entropy?format=raw&bytes={n}",
         "-o", "/dev/null", "-w", "%{size_download} %{time_total}"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    size, seconds = result.stdout.split()
    if int(size) != n:
        raise RuntimeError(f"downloaded {size} bytes instead of {n}")
    return n / float(seconds)


def wait_for_full_pool(url: str, token: str, timeout: float = 60.0) -> None:
    """Until the filler is idle: the level is at least its low water (half the target) and no longer moving."""
    request = urllib.request.Request(url + "/api/entropy/capabilities", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=10) as response:
            pool = json.load(response)["pool"]
        if pool["level_bytes"] >= pool["target_bytes"] // 2 and pool["level_bytes"] == last:
            return
        last = pool["level_bytes"]
        time.sleep(0.3)
    raise RuntimeError("the pool did not settle")


def gbit(rate: float) -> str:
    return f"{rate / 1e6:6.0f} MB/s = {rate * 8 / 1e9:5.2f} Gbit/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="/dev/urandom")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--filler", action=argparse.BooleanOptionalAction, default=True,
                        help="the web process's pool filler thread (the default, as make run ships)")
    parser.add_argument("--pool-mib", type=int, default=16, help="the pool's fill target (QRNG_POOL_TARGET_BYTES)")
    args = parser.parse_args()
    n = args.mib << 20
    with tempfile.TemporaryDirectory(prefix="qrng-bench-") as var:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        env.update(QXAAS_VAR_DIR=var, DJANGO_SETTINGS_MODULE="portal.settings.base", LOG_LEVEL="WARNING",
                   QRNG_SOURCES=json.dumps([{"name": "bench", "kind": "device", "path": args.device}]),
                   API_RATE_LIMIT_PER_SECOND="0", QRNG_POOL_FILLER_THREAD="true" if args.filler else "false",
                   QRNG_POOL_TARGET_BYTES=str(args.pool_mib << 20))
        py = sys.executable
        subprocess.run([py, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True)
        out = subprocess.run([py, "manage.py", "shell", "-c", SETUP], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True).stdout
        token = next(line[6:] for line in out.splitlines() if line.startswith("TOKEN="))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [py, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
             "--threads", "4", "--log-level", "warning"], cwd=REPO, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("gunicorn did not come up") from None
                    time.sleep(0.2)
            for _ in range(args.workers):
                through_api(url, token, CHUNK)  # warm-up: service built, start-up test run
            directs, apis, ratios = [], [], []
            for i in range(args.rounds):
                if args.filler:
                    wait_for_full_pool(url, token)
                d = direct(args.device, n)
                a = through_api(url, token, n)
                directs.append(d)
                apis.append(a)
                ratios.append(a / d)
                print(f"round {i + 1}: direct {gbit(d)}   API {gbit(a)}   ratio {a / d:.3f}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    api, ratio = statistics.median(apis), statistics.median(ratios)
    mode = f"pool filler thread, {args.pool_mib} MiB pool" if args.filler else "read-through (cold pool)"
    print(f"\n{args.mib} MiB raw, source {args.device}, {mode}, gunicorn {args.workers} worker(s), "
          f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    print(f"direct  (median) {gbit(statistics.median(directs))}")
    print(f"API     (median) {gbit(api)}   range {min(apis) * 8 / 1e9:.2f}-{max(apis) * 8 / 1e9:.2f} Gbit/s")
    print(f"ratio   (median) {ratio:.3f}   range {min(ratios):.3f}-{max(ratios):.3f}")
    print(f"goal >= 1 Gbit/s: {'met' if api * 8 >= 1e9 else 'NOT met'}; "
          f"goal ratio >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
