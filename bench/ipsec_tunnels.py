"""IPsec tunnels in the lab (root + strongSwan): order -> traffic flowing, re-key duration, packets lost across
re-keys under a 100 packets/s ping, concurrent tunnels held (each passing traffic), and throughput through one
tunnel vs the same path without IPsec (the baseline, measured in the same run).

Runs in one process: a madqci twin, a temporary database, the lab (3 namespaces, 3 charons), and the portal's
own service functions with Celery eager (``services.order_tunnel`` is what POST /api/tunnels calls; the HTTP layer
is left out). Tunnels go CAIT <-> Rectorado, two QKD hops and two IP hops (through the CCS namespace).

    .venv/bin/python bench/ipsec_tunnels.py [--tunnels 20] [--hold 50] [--rekeys 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway_common import TemporaryDatabase, make_tenants, percentile, setup_django, start_twin, stop_process

PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")


def traffic_flows(built, src: str, dst: str) -> bool:
    out = built.exec("CAIT", "ping", "-n", "-c", "1", "-W", "1", "-I", src, dst, check=False).stdout
    m = PING_RE.search(out)
    return bool(m and m.group(2) == "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tunnels", type=int, default=20, help="tunnels timed from order to traffic")
    parser.add_argument("--hold", type=int, default=50, help="concurrent tunnels to reach (goal 50)")
    parser.add_argument("--rekeys", type=int, default=10)
    parser.add_argument("--bytes", type=int, default=20_000_000, help="bytes per throughput transfer")
    args = parser.parse_args()

    from ipsec import lab

    reason = lab.unavailable_reason()
    if reason:
        print(f"ipsec_tunnels: skipped: {reason}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="qxaas-bench-ipsec-"))
    twin, built, db = None, None, None
    try:
        twin, endpoints = start_twin(tmp / "twin", time_scale=50.0)
        db = TemporaryDatabase(tmp)
        setup_django(tmp, db.url, tmp / "twin")
        from django.conf import settings

        from ipsec import services
        from ipsec.models import Tunnel, TunnelKeyEvent
        from portal.celery_app import app
        from tenants.models import Tenant

        settings.IPSEC_MIN_REKEY_INTERVAL_S = 1
        app.conf.task_always_eager = app.conf.task_eager_propagates = True
        make_tenants(endpoints, {"bench": []}, key_bits_per_day=-1, out_dir=tmp)
        tenant = Tenant.objects.get(slug="bench")
        built = lab.build(["CAIT", "CCS", "Rectorado"], [("CAIT", "CCS"), ("CCS", "Rectorado")],
                          f"qxb{os.getpid() % 100000}", tmp / "lab")
        services.register_lab(built)
        proposal = "aes256gcm16" if "AES_GCM_16" in (services._algorithms(services._gateway("CAIT")) or ()) \
            else "aes256-sha256"

        # 1. order -> traffic flowing, then hold more until --hold, every one passing traffic
        times, held, failures = [], [], []
        for k in range(max(args.tunnels, args.hold)):
            started = time.perf_counter()
            tunnel = services.order_tunnel(tenant, node_a="CAIT", node_b="Rectorado", subnet_a=f"10.100.{k}.0/24",
                                           subnet_b=f"10.102.{k}.0/24", esp_proposal=proposal,
                                           rekey_interval_s=3600)
            tunnel.refresh_from_db()
            src, dst = f"10.100.{k}.1", f"10.102.{k}.1"
            flowing = tunnel.state == "up" and any(traffic_flows(built, src, dst) for _ in range(5))
            if not flowing:
                failures.append(f"tunnel {k}: {tunnel.state} {tunnel.reason}")
                break
            if k < args.tunnels:
                times.append(time.perf_counter() - started)
            held.append((tunnel, src, dst))
        all_pass = sum(traffic_flows(built, src, dst) for _, src, dst in held)

        # 2. re-keys under a 100 packets/s ping on the first tunnel
        first, src, dst = held[0]
        count = args.rekeys * 60 + 200
        pinger = built.popen("CAIT", "ping", "-n", "-c", str(count), "-i", "0.01", "-I", src, dst,
                             stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        for _ in range(args.rekeys):
            services.rekey(first.pk)
            time.sleep(0.3)
        still_running = pinger.poll() is None
        sent, received = (int(x) for x in PING_RE.search(pinger.communicate(timeout=120)[0]).groups())
        events = list(TunnelKeyEvent.objects.filter(tunnel=first, kind="rekey").order_by("at"))
        durations = [e.duration_ms for e in events if e.ok]
        initial = [e.duration_ms for e in TunnelKeyEvent.objects.filter(kind="initial", ok=True)]

        # 3. throughput through one tunnel vs the same path (CAIT -> CCS -> Rectorado) without IPsec
        gw = {n.node_id: n for n in built.nodes.values()}
        tunnel_mbit = [services._throughput(gw["CAIT"].netns, gw["Rectorado"].netns, src, dst, args.bytes)
                       for _ in range(3)]
        plain_mbit = [services._throughput(gw["CAIT"].netns, gw["Rectorado"].netns, gw["CAIT"].address,
                                           gw["Rectorado"].address, args.bytes) for _ in range(3)]
        best_t, best_p = max(x or 0 for x in tunnel_mbit), max(x or 0 for x in plain_mbit)

        result = {
            "esp_proposal": proposal, "ike": "aes256-sha256-modp3072, RSA-3072 certificates, PPK",
            "order_to_traffic_s": {"n": len(times), "p50": round(percentile(times, 0.5), 3),
                                   "p95": round(percentile(times, 0.95), 3)},
            "initial_keying_ms": {"p50": percentile(initial, 0.5), "p95": percentile(initial, 0.95)},
            "concurrent_tunnels_held": len(held), "of_them_passing_traffic": all_pass, "goal": args.hold,
            "failures": failures,
            "rekey_ms": {"n": len(durations), "p50": percentile(durations, 0.5), "max": max(durations or [0]),
                         "failed": len(events) - len(durations)},
            "rekey_ping": {"sent": sent, "received": received, "lost": sent - received, "rate_pps": 100,
                           "rekeys": args.rekeys, "ping_outlasted_rekeys": still_running},
            "throughput_mbit_s": {"tunnel": best_t, "plain": best_p,
                                  "ratio": round(best_t / best_p, 3) if best_p else None,
                                  "runs_tunnel": tunnel_mbit, "runs_plain": plain_mbit},
        }
        print(json.dumps(result, indent=2))
        print(f"order->traffic p50 {result['order_to_traffic_s']['p50']} s, p95 {result['order_to_traffic_s']['p95']}"
              f" s over {len(times)}; held {len(held)} tunnels ({all_pass} passing traffic, goal {args.hold}); "
              f"re-key p50 {result['rekey_ms']['p50']} ms; lost {sent - received} of {sent} pings across "
              f"{args.rekeys} re-keys at 100 pps (goal 0); throughput {best_t} vs {best_p} Mbit/s without "
              f"IPsec = {result['throughput_mbit_s']['ratio']}x")
        for tunnel, _, _ in held:
            services.request_close(tunnel)  # autocommit: the close task runs (eagerly) right away
        assert not Tunnel.objects.unscoped().filter(state__in=Tunnel.live_states).exists()
    finally:
        if built is not None:
            built.stop()
        stop_process(twin)
        if db is not None:
            db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
