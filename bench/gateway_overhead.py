"""Gateway overhead: the same ETSI 014 ``enc_keys`` request direct to the twin's KME vs through the portal.

Direct: a backend SAE (twin certificate) asks its KME. Through the portal: a tenant's SAE (portal certificate)
asks the portal's HTTPS mTLS listener, which authenticates it, checks the tenant's quota, takes the keys from
the same KME, meters them and records the key IDs (auth + quota + ledger). Both in the same run, on the same
pairs:

- ``local``: both SAEs at CAIT (keys from the KME's entropy source, no link bounds the rate), so the figures
  are the gateway's own capacity;
- ``1-hop``: CAIT -> CCS over the cait-ccs link store (single-key latency only).

Every case is also measured through ``bench/bare_proxy.py`` (as many processes as the gateway's), which makes
the same KME call behind one more TLS hop and does none of the gateway's work: the floor under any gateway built
this way, measured in the same run.

The goals (issue 14), each judged on this run: single 256-bit key, 1 client, local and 1-hop: gateway p50 <=
1.5x the floor's p50 and p99 <= 2x the floor's p99; batches of 256-bit keys: keys/s >= 0.8x the floor's;
batches of the largest allowed keys (max_key_per_request x max_key_size): Mbit/s >= 0.9x direct.

    .venv/bin/python bench/gateway_overhead.py [--seconds 3] [--workers 2] [--threads 8] [--batch-clients 2]

PostgreSQL when DATABASE_URL names one (a temporary database is created and dropped), else SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_common import Bench, LoadResult, add_portal_arguments, run_load

# tenant SAE -> backend SAE it maps onto (the portal holds sae-cait-1/-2 at CAIT, sae-ccs-1 at CCS)
PAIRS = {
    "local": (("bench-cait-a", "bench-cait-b"), ("sae-cait-1", "sae-cait-2")),
    "1-hop": (("bench-cait-a", "bench-ccs"), ("sae-cait-1", "sae-ccs-1")),
}
TENANTS = {"bench": [("bench-cait-a", "CAIT"), ("bench-cait-b", "CAIT"), ("bench-ccs", "CCS")]}


def row(case: str, pair: str, clients: int, direct: LoadResult, portal: LoadResult,
        floor: LoadResult | None = None) -> dict:
    bare = None if floor is None else {
        "p50_ms": round(floor.p50_ms, 3), "p99_ms": round(floor.p99_ms, 3), "keys_per_s": round(floor.keys_per_s),
        "mbit_per_s": round(floor.mbit_per_s, 2), "errors": floor.errors,
        "ratio_p50": round(floor.p50_ms / direct.p50_ms, 2),
        "ratio_throughput": round(floor.keys_per_s / direct.keys_per_s, 3) if direct.keys else None,
        # the gateway against the floor: what the goals are stated in
        "portal_p50_x": round(portal.p50_ms / floor.p50_ms, 2), "portal_p99_x": round(portal.p99_ms / floor.p99_ms, 2),
        "portal_throughput_x": round(portal.keys_per_s / floor.keys_per_s, 3) if floor.keys else None}
    return {"bare_proxy": bare,
        "case": case, "pair": pair, "clients": clients,
        "direct": {"p50_ms": round(direct.p50_ms, 3), "p99_ms": round(direct.p99_ms, 3), "requests": direct.requests,
                   "errors": direct.errors, "keys_per_s": round(direct.keys_per_s), "mbit_per_s":
                   round(direct.mbit_per_s, 2)},
        "portal": {"p50_ms": round(portal.p50_ms, 3), "p99_ms": round(portal.p99_ms, 3), "requests": portal.requests,
                   "errors": portal.errors, "keys_per_s": round(portal.keys_per_s), "mbit_per_s":
                   round(portal.mbit_per_s, 2), "error_samples": portal.error_samples},
        "ratio": {"p50": round(portal.p50_ms / direct.p50_ms, 2), "p99": round(portal.p99_ms / direct.p99_ms, 2),
                  "throughput": round(portal.keys_per_s / direct.keys_per_s, 3) if direct.keys else None},
    }


async def compare(bench: Bench, pair: str, clients: int, seconds: float, body: dict,
                  bare: bool = False) -> tuple[LoadResult, LoadResult, LoadResult | None]:
    """Direct, through the portal, and (``bare``) through ``bench/bare_proxy.py``: one more hop, no work."""
    (master, slave), (backend_master, backend_slave) = PAIRS[pair]
    url, ctx = bench.direct(backend_master, backend_slave)
    direct = await run_load(url, ctx, clients, seconds, body)
    url, ctx = bench.through_portal(master, slave)
    portal = await run_load(url, ctx, clients, seconds, body)
    floor = None
    if bare:
        url, ctx = bench.bare_proxy(backend_master, backend_slave)
        floor = await run_load(url, ctx, clients, seconds, body)
    return direct, portal, floor


async def measure(bench: Bench, seconds: float, batch_clients: int) -> list[dict]:
    limits = json.loads(json.dumps(bench.limits))
    biggest = {"number": limits["max_key_per_request"], "size": limits["max_key_size"]}
    many_small = {"number": limits["max_key_per_request"], "size": 256}
    rows = []
    for pair in ("local", "1-hop"):
        direct, portal, floor = await compare(bench, pair, 1, seconds, {"number": 1, "size": 256}, bare=True)
        rows.append(row("1 x 256 bit", pair, 1, direct, portal, floor))
    direct, portal, floor = await compare(bench, "local", batch_clients, seconds, biggest, bare=True)
    rows.append(row(f"{biggest['number']} x {biggest['size']} bit", "local", batch_clients, direct, portal, floor))
    direct, portal, floor = await compare(bench, "local", batch_clients, seconds, many_small, bare=True)
    rows.append(row(f"{many_small['number']} x 256 bit", "local", batch_clients, direct, portal, floor))
    return rows


def goals(rows: list[dict]) -> dict[str, dict]:
    """The issue's goals, judged on this run's rows against the floor measured in it (a case with errors, at
    the gateway, direct or through the floor, meets nothing)."""
    single = [r for r in rows if r["case"] == "1 x 256 bit"]
    biggest, many_small = rows[-2], rows[-1]
    clean = all(r["portal"]["errors"] == 0 and r["direct"]["errors"] == 0
                and (r["bare_proxy"] is None or r["bare_proxy"]["errors"] == 0) for r in rows)
    return {
        "no_errors": {"met": clean},
        "single_key_p50_le_1.5x_floor_p99_le_2x_floor": {
            "met": clean and all(r["bare_proxy"]["portal_p50_x"] <= 1.5 and r["bare_proxy"]["portal_p99_x"] <= 2.0
                                 for r in single),
            **{f"{r['pair']}": f"p50 {r['portal']['p50_ms']:.2f} ms = {r['bare_proxy']['portal_p50_x']}x floor "
                               f"{r['bare_proxy']['p50_ms']:.2f} ms, p99 {r['portal']['p99_ms']:.2f} ms = "
                               f"{r['bare_proxy']['portal_p99_x']}x floor {r['bare_proxy']['p99_ms']:.2f} ms"
               for r in single}},
        "256_bit_batches_keys_per_s_ge_0.8x_floor": {
            "met": clean and many_small["bare_proxy"]["portal_throughput_x"] >= 0.8,
            "ratio": many_small["bare_proxy"]["portal_throughput_x"],
            "gateway_keys_per_s": many_small["portal"]["keys_per_s"],
            "floor_keys_per_s": many_small["bare_proxy"]["keys_per_s"]},
        "largest_keys_mbit_per_s_ge_0.9x_direct": {
            "met": clean and biggest["portal"]["mbit_per_s"] >= 0.9 * biggest["direct"]["mbit_per_s"],
            "ratio": round(biggest["portal"]["mbit_per_s"] / biggest["direct"]["mbit_per_s"], 3),
            "gateway_mbit_per_s": biggest["portal"]["mbit_per_s"], "direct_mbit_per_s": biggest["direct"]["mbit_per_s"],
            "floor_mbit_per_s": biggest["bare_proxy"]["mbit_per_s"]},
    }


def print_table(rows: list[dict]) -> None:
    head = (f"{'case':<18} {'pair':<6} {'cl':>2} | {'direct p50':>10} {'p99':>8} {'keys/s':>9} {'Mbit/s':>8} | "
            f"{'portal p50':>10} {'p99':>8} {'keys/s':>9} {'Mbit/s':>8} | {'p50 x':>6} {'p99 x':>6} {'thr x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        d, p, x = r["direct"], r["portal"], r["ratio"]
        print(f"{r['case']:<18} {r['pair']:<6} {r['clients']:>2} | {d['p50_ms']:>8.2f}ms {d['p99_ms']:>6.2f}ms "
              f"{d['keys_per_s']:>9,} {d['mbit_per_s']:>8.2f} | {p['p50_ms']:>8.2f}ms {p['p99_ms']:>6.2f}ms "
              f"{p['keys_per_s']:>9,} {p['mbit_per_s']:>8.2f} | {x['p50']:>6.2f} {x['p99']:>6.2f} "
              f"{x['throughput'] if x['throughput'] is not None else '-':>6}"
              + (f"  ERRORS direct {d['errors']} portal {p['errors']}: {p['error_samples'][:1]}"
                 if d["errors"] or p["errors"] else ""))
    print("floor: the same requests through bench/bare_proxy.py (one more hop, none of the gateway's work)")
    for r in rows:
        if r["bare_proxy"]:
            b = r["bare_proxy"]
            print(f"- {r['case']:<18} {r['pair']:<6} bare p50 {b['p50_ms']:.2f} ms p99 {b['p99_ms']:.2f} ms "
                  f"{b['keys_per_s']:,} keys/s {b['mbit_per_s']:.2f} Mbit/s: p50 x{b['ratio_p50']} of direct, "
                  f"keys/s x{b['ratio_throughput']}; gateway/floor p50 x{b['portal_p50_x']} p99 x{b['portal_p99_x']}"
                  f" keys/s x{b['portal_throughput_x']}" + (f" ERRORS {b['errors']}" if b["errors"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per case and side")
    parser.add_argument("--batch-clients", type=int, default=2, help="concurrent clients in the batched cases")
    add_portal_arguments(parser)
    args = parser.parse_args()
    with Bench(args.time_scale, args.workers, args.threads, TENANTS, key_bits_per_day=10**15) as bench:
        import requests

        url, _ = bench.direct("sae-cait-1", "sae-cait-2", "status")
        entry = bench.endpoints["saes"]["sae-cait-1"]
        bench.limits = requests.get(url, cert=(entry["cert"], entry["key"]), verify=bench.endpoints["ca"],
                                    timeout=10).json()
        rows = asyncio.run(measure(bench, args.seconds, args.batch_clients))
        result = {"setup": {**bench.describe(), "seconds_per_case": args.seconds, "time_scale": args.time_scale},
                  "rows": rows, "goals": goals(rows)}
    print(f"database: {result['setup']['database']}; portal: {result['setup']['portal_listener']}, "
          f"{args.workers} workers x {args.threads} threads; {args.seconds:g} s per case and side")
    print_table(rows)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    for name, verdict in result["goals"].items():
        print(f"goal {name}: {'met' if verdict['met'] else 'NOT met'} "
              f"{ {k: v for k, v in verdict.items() if k != 'met'} or ''}")
    # Errors make the figures meaningless (a 429 or 503 is fast): that is a failed run, unlike a missed goal.
    return 0 if result["goals"]["no_errors"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
