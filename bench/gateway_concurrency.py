"""Gateway under concurrency: 50 clients from 10 tenants, then the quota and the ledger must be exact.

Each tenant has a master SAE at CAIT and a slave SAE at CCS (keys over the cait-ccs link store). Each client
runs a bounded number of rounds: ``enc_keys`` (one 256-bit key) as the master, then ``dec_keys`` for that key
ID as the slave, and compares the two keys. The same pattern runs direct to the twin's KMEs (backend SAEs
sae-cait-1 -> sae-ccs-1) in the same run, as the baseline for p99 and throughput, and through
``bench/bare_proxy.py`` (as many processes as the gateway's; one more hop, none of the gateway's work), the
floor. The goal (issue 14): no errors, and the gateway's keys/s >= 0.8x the floor's under the same load.

Afterwards, for every tenant: bits the clients received == the quota counter (qkd_key_bits.day) == the sum of
its usage ledger == the key bits on its KeyDelivery rows, and every delivered key is marked fetched.

    .venv/bin/python bench/gateway_concurrency.py [--rounds 40] [--workers 2] [--threads 8]

PostgreSQL when DATABASE_URL names one (a temporary database is created and dropped), else SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from gateway_common import Bench, add_portal_arguments, percentile, tls_context

TENANT_COUNT = 10
CLIENTS_PER_TENANT = 5
KEY_BITS = 256


def tenants() -> dict[str, list[tuple[str, str]]]:
    return {f"t{i:02d}": [(f"t{i:02d}-cait", "CAIT"), (f"t{i:02d}-ccs", "CCS")] for i in range(TENANT_COUNT)}


@dataclass
class Side:
    """How one client of one tenant reaches enc_keys (as the master) and dec_keys (as the slave)."""

    enc_url: str
    dec_url: str
    master_ctx: ssl.SSLContext
    slave_ctx: ssl.SSLContext


@dataclass
class Outcome:
    enc_latencies: list[float] = field(default_factory=list)
    dec_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bits_by_tenant: dict[str, int] = field(default_factory=dict)
    keys: int = 0
    seconds: float = 0.0


async def client(tenant: str, side: Side, rounds: int, outcome: Outcome) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=side.master_ctx, limit=1),
                                     timeout=timeout) as master, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=side.slave_ctx, limit=1),
                                  timeout=timeout) as slave:
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with master.post(side.enc_url, json={"number": 1, "size": KEY_BITS}) as response:
                body = await response.json(content_type=None)
            outcome.enc_latencies.append(time.perf_counter() - t0)
            if response.status != 200:
                outcome.errors.append(f"enc_keys {response.status} {str(body)[:200]}")
                continue
            key = body["keys"][0]
            outcome.bits_by_tenant[tenant] = outcome.bits_by_tenant.get(tenant, 0) + KEY_BITS
            outcome.keys += 1
            t0 = time.perf_counter()
            async with slave.post(side.dec_url, json={"key_IDs": [{"key_ID": key["key_ID"]}]}) as response:
                peer = await response.json(content_type=None)
            outcome.dec_latencies.append(time.perf_counter() - t0)
            if response.status != 200:
                outcome.errors.append(f"dec_keys {response.status} {str(peer)[:200]}")
            elif peer["keys"][0]["key"] != key["key"]:
                outcome.errors.append("dec_keys returned a different key")


async def run(sides: dict[str, Side], rounds: int) -> Outcome:
    outcome = Outcome()
    t0 = time.perf_counter()
    await asyncio.gather(*(client(tenant, side, rounds, outcome)
                           for tenant, side in sides.items() for _ in range(CLIENTS_PER_TENANT)))
    outcome.seconds = time.perf_counter() - t0
    return outcome


def ledger_check(outcome: Outcome) -> list[dict]:
    from services.models import KeyDelivery
    from tenants import quota
    from tenants.models import Tenant, UsageRecord

    rows = []
    for tenant in Tenant.objects.filter(slug__in=list(tenants())).order_by("slug"):
        used = next(s.used for s in quota.quota_states(tenant) if s.quota_key == "qkd_key_bits.day")
        ledger = sum(UsageRecord.objects.for_tenant(tenant).filter(meter="qkd_key_bits").values_list("quantity",
                                                                                                    flat=True))
        deliveries = KeyDelivery.objects.for_tenant(tenant)
        received = outcome.bits_by_tenant.get(tenant.slug, 0)
        rows.append({"tenant": tenant.slug, "received_bits": received, "quota_used": used, "ledger_bits": ledger,
                     "key_delivery_bits": sum(d.key_count * d.size_bits for d in deliveries),
                     "unfetched": sum(d.key_count - d.fetched_keys for d in deliveries)})
        rows[-1]["exact"] = (received == used == ledger == rows[-1]["key_delivery_bits"]
                             and rows[-1]["unfetched"] == 0)
    return rows


def summary(outcome: Outcome) -> dict:
    return {"keys": outcome.keys, "errors": len(outcome.errors), "error_samples": outcome.errors[:3],
            "seconds": round(outcome.seconds, 2), "keys_per_s": round(outcome.keys / outcome.seconds, 1),
            "enc_p50_ms": round(percentile(outcome.enc_latencies, 0.5) * 1000, 2),
            "enc_p99_ms": round(percentile(outcome.enc_latencies, 0.99) * 1000, 2),
            "dec_p50_ms": round(percentile(outcome.dec_latencies, 0.5) * 1000, 2),
            "dec_p99_ms": round(percentile(outcome.dec_latencies, 0.99) * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="enc_keys + dec_keys rounds per client")
    add_portal_arguments(parser)
    args = parser.parse_args()
    with Bench(args.time_scale, args.workers, args.threads, tenants(), key_bits_per_day=10**9) as bench:
        ep = bench.endpoints
        cait, ccs = ep["nodes"]["CAIT"]["url"], ep["nodes"]["CCS"]["url"]
        direct_side = Side(f"{cait}/api/v1/keys/sae-ccs-1/enc_keys", f"{ccs}/api/v1/keys/sae-cait-1/dec_keys",
                           tls_context(ep["ca"], ep["saes"]["sae-cait-1"]["cert"], ep["saes"]["sae-cait-1"]["key"]),
                           tls_context(ep["ca"], ep["saes"]["sae-ccs-1"]["cert"], ep["saes"]["sae-ccs-1"]["key"]))
        # the direct baseline has one backend SAE pair: all 50 clients share it (as the portal's backend does)
        direct = asyncio.run(run({f"t{i:02d}": direct_side for i in range(TENANT_COUNT)}, args.rounds))
        (enc_url, bare_ctx), (dec_url, _) = (bench.bare_proxy("sae-cait-1", "sae-ccs-1"),
                                             bench.bare_proxy("sae-ccs-1", "sae-cait-1", "dec_keys"))
        floor_side = Side(enc_url, dec_url, bare_ctx, bare_ctx)
        floor = asyncio.run(run({f"t{i:02d}": floor_side for i in range(TENANT_COUNT)}, args.rounds))
        base, ca = bench.portal.base_url, bench.portal.ca
        portal_sides = {}
        for slug in tenants():
            m, s = bench.saes[f"{slug}-cait"], bench.saes[f"{slug}-ccs"]
            portal_sides[slug] = Side(f"{base}/api/v1/keys/{s.name}/enc_keys", f"{base}/api/v1/keys/{m.name}/dec_keys",
                                      tls_context(ca, m.cert, m.key), tls_context(ca, s.cert, s.key))
        portal = asyncio.run(run(portal_sides, args.rounds))
        ledger = ledger_check(portal)
        d, f, p = summary(direct), summary(floor), summary(portal)
        result = {"setup": {**bench.describe(), "tenants": TENANT_COUNT, "clients": TENANT_COUNT * CLIENTS_PER_TENANT,
                            "rounds_per_client": args.rounds, "time_scale": args.time_scale},
                  "direct": d, "bare_proxy": f, "portal": p,
                  "ratio": {"enc_p99": round(p["enc_p99_ms"] / d["enc_p99_ms"], 2),
                            "dec_p99": round(p["dec_p99_ms"] / d["dec_p99_ms"], 2),
                            "keys_per_s": round(p["keys_per_s"] / d["keys_per_s"], 3),
                            "keys_per_s_vs_floor": round(p["keys_per_s"] / f["keys_per_s"], 3),
                            "enc_p99_vs_floor": round(p["enc_p99_ms"] / f["enc_p99_ms"], 2)},
                  "ledger": ledger, "ledger_exact": all(r["exact"] for r in ledger) and len(ledger) == TENANT_COUNT}
    print(f"database: {result['setup']['database']}; portal: {result['setup']['portal_listener']}, "
          f"{args.workers} workers x {args.threads} threads; 50 clients from 10 tenants, {args.rounds} rounds each")
    print(f"{'':8} {'keys':>6} {'errors':>6} {'keys/s':>8} {'enc p50':>9} {'enc p99':>9} {'dec p50':>9} {'dec p99':>9}")
    for name, s in (("direct", d), ("floor", f), ("portal", p)):
        print(f"{name:8} {s['keys']:>6} {s['errors']:>6} {s['keys_per_s']:>8} {s['enc_p50_ms']:>7}ms "
              f"{s['enc_p99_ms']:>7}ms {s['dec_p50_ms']:>7}ms {s['dec_p99_ms']:>7}ms")
    print(f"ratios portal/direct (and vs the floor, bench/bare_proxy.py): {result['ratio']}")
    print(f"{'tenant':8} {'received':>9} {'quota':>9} {'ledger':>9} {'rows x256':>9} {'unfetched':>9} exact")
    for r in ledger:
        print(f"{r['tenant']:8} {r['received_bits']:>9} {r['quota_used']:>9} {r['ledger_bits']:>9} "
              f"{r['key_delivery_bits']:>9} {r['unfetched']:>9} {r['exact']}")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    ok = result["ledger_exact"] and p["errors"] == 0
    no_errors = p["errors"] == 0 and d["errors"] == 0 and f["errors"] == 0
    print(f"goal no_errors: {'met' if no_errors else 'NOT met'} (gateway {p['errors']}, direct {d['errors']}, "
          f"floor {f['errors']})")
    x = result["ratio"]["keys_per_s_vs_floor"]
    print(f"goal keys_per_s_ge_0.8x_floor: {'met' if no_errors and x >= 0.8 else 'NOT met'} (gateway "
          f"{p['keys_per_s']} keys/s = {x}x the floor's {f['keys_per_s']} keys/s; direct {d['keys_per_s']})")
    print("RESULT:", "no errors, quota and ledger exact" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
