"""KME serving benchmark: ETSI 014 enc_keys over HTTPS (mutual TLS, keep-alive) against the madqci twin.

Figures: single 256-bit key latency p50/p99 with 1 and 50 concurrent clients, and keys/s with batches of
max_key_per_request, for a direct neighbour (CAIT -> CCS, 1 hop) and a relayed pair (CAIT -> Rectorado via CCS).
Baseline measured in the same run: the HTTPS round trip of the `status` call (no key work), so the ratio shows
what key delivery costs on top of HTTPS + mTLS + JSON.

    .venv/bin/python bench/twin_kme.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_common import percentile, run_for

REPO = Path(__file__).resolve().parents[1]
MASTER = "sae-cait-1"


def start_twin(state: Path, time_scale: float, mode: str | None = None) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.sdqkd.twin", "--topology", "madqci", "--state-dir", str(state),
         "--base-port", "0", "--time-scale", str(time_scale), "--log-level", "WARNING",
         *(["--mode", mode] if mode else [])],
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while not (state / "endpoints.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("twin did not start")
        time.sleep(0.02)
    return proc, json.loads((state / "endpoints.json").read_text())


async def run_load(url: str, ctx: ssl.SSLContext, clients: int, seconds: float, method: str, body: dict | None):
    """``clients`` concurrent keep-alive connections issuing requests back to back for ``seconds``."""
    latencies: list[float] = []
    keys = 0
    errors = 0
    connector = aiohttp.TCPConnector(ssl=ctx, limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(session=session):
            nonlocal keys, errors
            t0 = time.perf_counter()
            async with session.request(method, url, json=body) as response:
                data = await response.read()
            latencies.append(time.perf_counter() - t0)
            if response.status == 200:
                keys += data.count(b'"key_ID"')
            else:
                errors += 1

        await asyncio.gather(*(one() for _ in range(clients)))  # warm up: connections and TLS handshakes
        latencies.clear()
        keys = 0
        errors = 0
        elapsed = await run_for(one, clients, seconds, max_requests=10_000_000)
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "keys_per_s": keys / elapsed,
        "requests_per_s": len(latencies) / elapsed,
    }


async def bench(endpoints: dict, seconds: float) -> list[dict]:
    cert, key = endpoints["saes"][MASTER]["cert"], endpoints["saes"][MASTER]["key"]
    ctx = ssl.create_default_context(cafile=endpoints["ca"])
    ctx.load_cert_chain(cert, key)
    base = endpoints["nodes"]["CAIT"]["url"] + "/api/v1/keys"
    rows = []
    for slave, label in (("sae-ccs-1", "direct (1 hop)"), ("sae-rectorado-1", "relayed (2 hops)")):
        cases = [
            ("status (baseline)", "GET", f"{base}/{slave}/status", None, (1, 50)),
            ("enc_keys 1 x 256 bit", "POST", f"{base}/{slave}/enc_keys", {"number": 1, "size": 256}, (1, 50)),
            ("enc_keys 1024 x 256 bit", "POST", f"{base}/{slave}/enc_keys", {"number": 1024, "size": 256}, (1, 4)),
        ]
        for name, method, url, body, concurrency in cases:
            for clients in concurrency:
                result = await run_load(url, ctx, clients, seconds, method, body)
                rows.append({"pair": label, "call": name, "clients": clients, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--time-scale", type=float, default=200.0, help="link rates x this (stores must keep up)")
    parser.add_argument("--mode", choices=["protocol", "statistical", "analytical"],
                        help="every link's key generation mode (default: the topology's; madqci: protocol)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoints = start_twin(Path(tmp) / "state", args.time_scale, args.mode)
        try:
            time.sleep(1.0)  # let the stores fill
            rows = asyncio.run(bench(endpoints, args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    baseline = {(r["pair"], r["clients"]): r["p50_ms"] for r in rows if r["call"].startswith("status")}
    print(f"{'pair':18} {'call':26} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'keys/s':>10} {'req/s':>8} "
          f"{'err':>4} {'p50/status':>10}")
    for r in rows:
        ratio = r["p50_ms"] / baseline.get((r["pair"], r["clients"]), r["p50_ms"])
        r["p50_ratio_to_status"] = ratio
        print(f"{r['pair']:18} {r['call']:26} {r['clients']:>7} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['keys_per_s']:10.0f} {r['requests_per_s']:8.0f} {r['errors']:>4} {ratio:10.2f}")
    print(json.dumps({"benchmark": "twin_kme", "cpus": os.cpu_count(), "seconds": args.seconds,
                      "time_scale": args.time_scale, "results": rows}, indent=None))


if __name__ == "__main__":
    main()
