"""The protocol simulation inside the running twin: madqci with two parties per link over node-to-node HTTPS.

For each mode (all links in that mode, time scale 1, fresh state, 8 s after start-up):
- post-processing blocks per second and their mode, final key bits per second delivered into the stores,
  block latency (p50), and the CPU used by the twin's main process (KMEs, the relay of every classical message
  over HTTPS) and by its protocol workers, per final key bit;
- ETSI 014 `status` latency (p50/p99, one client, keep-alive, mTLS) while the links generate: what protocol mode
  costs the KMEs, against analytical mode (the baseline, measured in the same run).
Then statistical mode at rising time scales: the highest link rate (the long span's achieved rate times the time
scale) the twin still delivers into the stores in real time.

    .venv/bin/python bench/twin_protocol.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = REPO / "services" / "sdqkd" / "topologies" / "madqci.yaml"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that have not exited (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start(topology: Path, state: Path, time_scale: float, extra: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.sdqkd.twin", "--topology", str(topology), "--state-dir", str(state),
         "--base-port", "0", "--time-scale", str(time_scale), "--log-level", "WARNING", *extra], cwd=REPO,
    )
    endpoints = state / "endpoints.json"
    deadline = time.monotonic() + 30
    while not endpoints.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("twin did not start")
        time.sleep(0.01)
    return proc, json.loads(endpoints.read_text())


def session(endpoints: dict, sae: str | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = endpoints["ca"]
    if sae:
        s.cert = (endpoints["saes"][sae]["cert"], endpoints["saes"][sae]["key"])
    else:
        s.cert = (endpoints["portal"]["cert"], endpoints["portal"]["key"])
    return s


def run_mode(label: str, extra: list[str], seconds: float, topology: Path = TOPOLOGY) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoints = start(topology, Path(tmp) / "state", 1.0, extra)
        try:
            portal, sae = session(endpoints), session(endpoints, "sae-cait-1")
            url = endpoints["nodes"]["CAIT"]["url"]
            time.sleep(1.0)  # workers start, first blocks
            view0 = portal.get(url + "/api/v1/topology", timeout=10).json()
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            latencies = []
            while time.monotonic() - t0 < seconds:
                s0 = time.perf_counter()
                sae.get(url + "/api/v1/keys/sae-ccs-1/status", timeout=10).raise_for_status()
                latencies.append(time.perf_counter() - s0)
                time.sleep(0.01)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            view1 = portal.get(url + "/api/v1/topology", timeout=10).json()
            blocks = {}
            for link in view1["links"]:
                p1 = link.get("protocol") or {"blocks": {}}
                before = next(v for v in view0["links"] if v["id"] == link["id"])
                p0 = before.get("protocol") or {"blocks": {}}
                history = session(endpoints).get(f"{url}/api/v1/links/{link['id']}/blocks?limit=64",
                                                 timeout=10).json()["blocks"]
                lat = [b["block_latency_s"] for b in history
                       if b.get("mode") == "protocol" and b.get("block_latency_s")]
                blocks[link["id"]] = {
                    "protocol_blocks": p1["blocks"].get("protocol", 0) - p0["blocks"].get("protocol", 0),
                    "statistical_blocks": p1["blocks"].get("statistical", 0) - p0["blocks"].get("statistical", 0),
                    "delivered_bps": (link["key_store_fill_bits"] - before["key_store_fill_bits"]) / elapsed,
                    "protocol_latency_p50_s": statistics.median(lat) if lat else None,
                    "rate_bps": link["secret_key_rate_bps"],
                }
            latencies.sort()
            return {
                "mode": label, "seconds": elapsed, "cpu_s": cpu, "cpu_share": cpu / elapsed, "links": blocks,
                "status_p50_ms": 1000 * latencies[len(latencies) // 2],
                "status_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            }
        finally:
            proc.terminate()
            proc.wait(timeout=20)


REALTIME_ROWS = (  # (mode, time scale, store block bits, post-processing block bits)
    ("statistical", 1, 65536, 500_000), ("statistical", 10, 65536, 500_000), ("statistical", 50, 65536, 500_000),
    ("statistical", 200, 65536, 500_000), ("analytical", 200, 65536, 500_000),
    ("statistical", 200, 1048576, 10_000_000), ("statistical", 1000, 1048576, 10_000_000),
    ("analytical", 1000, 1048576, 10_000_000),
)


def statistical_realtime(seconds: float) -> list[dict]:
    """Rising time scales: the rate delivered into the stores vs the paced link rate (long span). Analytical
    mode at the same scale shows what the store path alone costs; bigger store blocks cut that cost."""
    out = []
    base = TOPOLOGY.read_text().replace("key_store_capacity_bits: 16777216", "key_store_capacity_bits: 4294967296")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, scale, block_bits, pp_bits in REALTIME_ROWS:
            topology = Path(tmp) / f"madqci-{block_bits}-{pp_bits}.yaml"
            text = base.replace("block_size_bits: 65536", f"block_size_bits: {block_bits}")
            topology.write_text(text.replace("postprocessing_block_bits: 500000",
                                             f"postprocessing_block_bits: {pp_bits}"))
            state = Path(tmp) / f"s-{mode}-{scale}-{block_bits}-{pp_bits}"
            proc, endpoints = start(topology, state, float(scale), ["--mode", mode])
            try:
                portal = session(endpoints)
                url = endpoints["nodes"]["CAIT"]["url"] + "/api/v1/topology"
                time.sleep(0.5)
                v0, c0, t0 = portal.get(url, timeout=10).json(), cpu_seconds(proc.pid), time.monotonic()
                time.sleep(seconds)
                v1, c1, t1 = portal.get(url, timeout=10).json(), cpu_seconds(proc.pid), time.monotonic()
                link0 = next(v for v in v0["links"] if v["id"] == "ccs-rectorado")
                link1 = next(v for v in v1["links"] if v["id"] == "ccs-rectorado")
                delivered = (link1["key_store_fill_bits"] - link0["key_store_fill_bits"]) / (t1 - t0)
                out.append({"mode": mode, "time_scale": scale, "block_bits": block_bits, "pp_bits": pp_bits,
                            "paced_bps": link1["secret_key_rate_bps"] * scale, "delivered_bps": delivered,
                            "cpu_share": (c1 - c0) / (t1 - t0)})
            finally:
                proc.terminate()
                proc.wait(timeout=20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        strict = Path(tmp) / "madqci-protocol-every-block.yaml"
        strict.write_text(TOPOLOGY.read_text().replace("mode: protocol", "mode: protocol\n    protocol_fraction: 1.0"))
        results = [
            run_mode("analytical (baseline)", ["--mode", "analytical"], args.seconds),
            run_mode("statistical", ["--mode", "statistical"], args.seconds),
            run_mode("protocol, auto fraction (default)", [], args.seconds),
            run_mode("protocol on every block", [], args.seconds, strict),
        ]
    print(f"== madqci in the running twin, time scale 1, {args.seconds:.0f} s per mode "
          f"(load average {os.getloadavg()[0]:.1f}) ==")
    print(f"{'mode':36} {'link':14} {'prot/s':>7} {'stat/s':>7} {'delivered':>11} {'latency':>8} "
          f"{'twin CPU':>9} {'status p50':>10} {'p99':>8}")
    for r in results:
        for i, (link, b) in enumerate(r["links"].items()):
            lat = f"{b['protocol_latency_p50_s']:.2f}s" if b["protocol_latency_p50_s"] else "-"
            head = (f"{r['mode']:36}" if i == 0 else " " * 36)
            tail = (f"{r['cpu_share']:>8.2f}c {r['status_p50_ms']:>8.2f}ms {r['status_p99_ms']:>6.1f}ms" if i == 0
                    else "")
            print(f"{head} {link:14} {b['protocol_blocks'] / r['seconds']:>7.2f} "
                  f"{b['statistical_blocks'] / r['seconds']:>7.2f} {b['delivered_bps'] / 1e6:>8.3f}Mb/s {lat:>8} "
                  f"{tail}")
    base = results[0]["status_p50_ms"]
    for r in results[1:]:
        print(f"status p50 {r['mode']}: x{r['status_p50_ms'] / base:.2f} of analytical")
    stat = statistical_realtime(args.seconds / 2)
    print("== ccs-rectorado at rising time scales (both links at that scale, store capacity 4 Gbit) ==")
    for row in stat:
        print(f"{row['mode']:11} x{row['time_scale']:<4} store block {row['block_bits']:>7} bit, post-processing "
              f"block {row['pp_bits']:>8} bit: paced "
              f"{row['paced_bps'] / 1e6:>8.1f} Mb/s, delivered {row['delivered_bps'] / 1e6:>8.1f} Mb/s "
              f"({row['delivered_bps'] / row['paced_bps']:.2f}), twin CPU {row['cpu_share']:.2f} cores")
    print(json.dumps({"modes": results, "statistical_realtime": stat}))


if __name__ == "__main__":
    main()
