"""Bring-up benchmark: from `python -m services.sdqkd.twin` to the first key available at every node.

For each topology, cold (empty state directory: the PKI is created) and warm (restart on the same state). "Key
available at a node" = a link touching the node holds key in its stores (polled over HTTPS on the topology
endpoint every 5 ms). Time scale 1: the links' real analytical rates.
Baseline measured in the same run: starting the same interpreter and importing the twin (the floor any
bring-up pays). Reference (not measured here): the QDTS/Quditto twin took about 7 minutes for 8 nodes.

    .venv/bin/python bench/twin_bringup.py [--repeat 3]
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
QDTS_SECONDS = 7 * 60
TOPOLOGIES = ("madqci", "line-8", "mesh-8")


def import_floor() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import services.sdqkd.twin.network"], cwd=REPO, check=True)
    return time.perf_counter() - t0


def bring_up(topology: str, state: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.sdqkd.twin", "--topology", topology, "--state-dir", str(state),
         "--base-port", "0", "--log-level", "WARNING"],
        cwd=REPO,
    )
    try:
        endpoints_file = state / "endpoints.json"
        deadline = t0 + 60
        while not endpoints_file.exists():
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"{topology}: twin did not start")
            time.sleep(0.005)
        listening = time.perf_counter() - t0
        endpoints = json.loads(endpoints_file.read_text())
        session = requests.Session()
        session.trust_env = False
        session.verify = endpoints["ca"]
        session.cert = (endpoints["portal"]["cert"], endpoints["portal"]["key"])
        url = next(iter(endpoints["nodes"].values()))["url"] + "/api/v1/topology"
        for _ in range(12_000):
            view = session.get(url, timeout=10).json()
            with_key = {end for link in view["links"] if link["key_store_fill_bits"] > 0 for end in link["endpoints"]}
            if with_key >= {node["id"] for node in view["nodes"]}:
                return {"listening_s": listening, "first_key_everywhere_s": time.perf_counter() - t0,
                        "nodes": len(view["nodes"])}
            if time.perf_counter() > deadline:
                break
            time.sleep(0.005)
        raise SystemExit(f"{topology}: no key at every node within 60 s")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import_floor()  # warm the file cache, as the twin runs below find it
    floor = statistics.median(import_floor() for _ in range(args.repeat))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for topology in TOPOLOGIES:
            cold, warm = [], []
            for i in range(args.repeat):
                state = Path(tmp) / f"{topology}-{i}"
                cold.append(bring_up(topology, state))
                warm.append(bring_up(topology, state))
            for kind, runs in (("cold", cold), ("warm", warm)):
                first_key = statistics.median(r["first_key_everywhere_s"] for r in runs)
                rows.append({
                    "topology": topology,
                    "start": kind,
                    "nodes": runs[0]["nodes"],
                    "listening_s": statistics.median(r["listening_s"] for r in runs),
                    "first_key_everywhere_s": first_key,
                    "ratio_to_import_floor": first_key / floor,
                    "speedup_vs_qdts_7min": QDTS_SECONDS / first_key,
                })
    print(f"baseline (same run): interpreter start + import of the twin = {floor:.3f} s (median of {args.repeat})")
    print(f"{'topology':10} {'start':5} {'nodes':>5} {'listening s':>12} {'key everywhere s':>17} "
          f"{'/ import floor':>15} {'vs QDTS 7 min':>14}")
    for r in rows:
        print(f"{r['topology']:10} {r['start']:5} {r['nodes']:>5} {r['listening_s']:12.3f} "
              f"{r['first_key_everywhere_s']:17.3f} {r['ratio_to_import_floor']:15.2f} "
              f"{r['speedup_vs_qdts_7min']:13.0f}x")
    print(json.dumps({"benchmark": "twin_bringup", "cpus": os.cpu_count(), "repeat": args.repeat,
                      "import_floor_s": floor, "results": rows}))


if __name__ == "__main__":
    main()
