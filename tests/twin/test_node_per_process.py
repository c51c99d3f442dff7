"""One node per process (``--node``), as in a real deployment: key blocks, relay and ETSI 014 all go over
HTTPS between the processes."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]

NODES = ("CAIT", "CCS", "Rectorado")


def free_base_port(count: int) -> int:
    for _ in range(50):
        base = random.randint(20000, 60000)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def test_madqci_with_one_process_per_node(tmp_path):
    state, base = tmp_path / "state", free_base_port(len(NODES))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.sdqkd.twin", "--state-dir", str(state), "--base-port", str(base),
             "--node", node, "--time-scale", "50", "--log-level", "WARNING"],
            cwd=REPO,
        )
        for node in NODES
    ]
    try:
        deadline = time.monotonic() + 20
        while not all((state / f"endpoints-{n}.json").exists() for n in NODES):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        endpoints = json.loads((state / "endpoints-CAIT.json").read_text())
        local = {n: e["local"] for n, e in endpoints["nodes"].items()}
        assert local == {"CAIT": True, "CCS": False, "Rectorado": False}

        def session(sae):
            s = requests.Session()
            s.trust_env = False
            s.verify, s.cert = endpoints["ca"], (endpoints["saes"][sae]["cert"], endpoints["saes"][sae]["key"])
            return s

        master, slave = session("sae-cait-1"), session("sae-rectorado-1")
        url = f"https://127.0.0.1:{base}/api/v1/keys/sae-rectorado-1/enc_keys"
        for _ in range(200):  # key blocks reach the other processes' stores over HTTPS
            response = master.post(url, json={"number": 2}, timeout=10)
            if response.status_code == 200:
                break
            time.sleep(0.05)
        assert response.status_code == 200, response.text
        keys = response.json()["keys"]
        assert keys[0]["key_ID_extension"]["path"] == ["CAIT", "CCS", "Rectorado"]
        got = slave.post(f"https://127.0.0.1:{base + 2}/api/v1/keys/sae-cait-1/dec_keys",
                         json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}, timeout=10)
        assert [k["key"] for k in got.json()["keys"]] == [k["key"] for k in keys]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)


def test_one_process_per_node_reroutes_around_a_cut_link(tmp_path):
    nodes = [f"N{i}" for i in range(1, 9)]
    state, base = tmp_path / "state", free_base_port(len(nodes))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.sdqkd.twin", "--topology", "mesh-8", "--state-dir", str(state),
             "--base-port", str(base), "--node", node, "--time-scale", "50", "--log-level", "WARNING"],
            cwd=REPO,
        )
        for node in nodes
    ]
    try:
        deadline = time.monotonic() + 30
        while not all((state / f"endpoints-{n}.json").exists() for n in nodes):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        endpoints = json.loads((state / "endpoints-N1.json").read_text())

        def session(cert_key):
            s = requests.Session()
            s.trust_env = False
            s.verify, s.cert = endpoints["ca"], cert_key
            return s

        master = session((endpoints["saes"]["sae-n1-1"]["cert"], endpoints["saes"]["sae-n1-1"]["key"]))
        portal = session((endpoints["portal"]["cert"], endpoints["portal"]["key"]))
        # Cut both 2-hop routes N1 -> N6 (via N5 and via N2), through the admin API of N3, a process that is an
        # end of neither link: N1 must hear of it, or it would pick a dead 2-hop route.
        for link in ("n5-n6", "n2-n6"):
            assert portal.post(f"https://127.0.0.1:{base + 2}/api/v1/admin/links/{link}/cut", timeout=10).ok
        url = f"https://127.0.0.1:{base}/api/v1/keys/sae-n6-1/enc_keys"
        for _ in range(200):
            response = master.post(url, json={"number": 1}, timeout=10)
            if response.status_code == 200:
                break
            time.sleep(0.05)
        assert response.status_code == 200, response.text
        path = response.json()["keys"][0]["key_ID_extension"]["path"]
        assert path[0] == "N1" and path[-2:] == ["N7", "N6"]  # N6's only link left is n6-n7
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)
