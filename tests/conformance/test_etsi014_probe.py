"""The ETSI GS QKD 014 conformance probe (services.sdqkd.conformance) against the twin's KMEs and the portal,
and against a deliberately lax KME to show that it catches what it claims to."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from services.sdqkd.conformance import Probe, ProbeTarget, SaeIdentity, run_probe
from tests.services.test_mtls import write_bundle

ROOT = Path(__file__).resolve().parents[2]


def verdicts(results) -> dict[str, str]:
    return {r.name: r.outcome for r in results}


def assert_all_pass(results) -> None:
    bad = [f"{r.name}: {r.outcome} {r.detail}" for r in results if r.outcome != "pass"]
    assert not bad, "\n".join(bad)
    assert [r.name for r in results] == list(Probe.CHECKS)


def test_the_twin_kmes_conform_including_relay_and_multicast(twin_factory):
    twin = twin_factory("madqci")
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=50)

    def sae(name: str) -> SaeIdentity:
        return SaeIdentity(name, *twin.sae_cert(name))

    # CAIT -> Rectorado is relayed through CCS: dec_keys is asked at Rectorado's own KME.
    target = ProbeTarget(twin.url("CAIT"), twin.ca, sae("sae-cait-1"), sae("sae-rectorado-1"),
                         extra_slave=sae("sae-rectorado-2"), outsider=sae("sae-cait-2"),
                         slave_base_url=twin.url("Rectorado"))
    assert_all_pass(run_probe(target))


@pytest.mark.postgres
def test_the_portal_etsi014_listener_conforms_with_tenant_sae_bundles(https_portal, make_lab, tmp_path):
    lab = make_lab("probe")
    lab.add_sae("probe-rect-2", "Rectorado")
    lab.add_sae("probe-cait-2", "CAIT")
    ca = tmp_path / "ca.pem"
    ca.write_text(lab.bundles["probe-cait"]["ca_chain"])

    def sae(name: str) -> SaeIdentity:
        return SaeIdentity(name, *write_bundle(tmp_path, name, lab.bundles[name]))

    target = ProbeTarget(https_portal, str(ca), sae("probe-cait"), sae("probe-rect"),
                         extra_slave=sae("probe-rect-2"), outsider=sae("probe-cait-2"))
    assert_all_pass(run_probe(target))


def test_the_command_line_reports_and_exits_non_zero_on_a_failure(lax_kme):
    result = subprocess.run(
        [sys.executable, "-m", "services.sdqkd.conformance", "--base-url", lax_kme, "--ca", "/dev/null",
         "--master", "sae-a::", "--slave", "sae-b::", "--only", "invalid_sizes", "--only", "round_trip_post",
         "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr
    report = {r["name"]: r for r in json.loads(result.stdout)}
    assert report["invalid_sizes"]["outcome"] == "fail" and "size=0" in report["invalid_sizes"]["detail"]
    assert report["round_trip_post"]["outcome"] == "pass"


def test_the_probe_catches_a_lax_kme(lax_kme):
    """A KME that takes any size and number and lets a key ID be fetched twice fails exactly those checks."""
    target = ProbeTarget(lax_kme, False, SaeIdentity("sae-a", headers={"X-SAE-ID": "sae-a"}),
                         SaeIdentity("sae-b", headers={"X-SAE-ID": "sae-b"}))
    got = verdicts(run_probe(target))
    assert got["status_fields"] == "pass" and got["round_trip_post"] == "pass" and got["round_trip_get"] == "pass"
    for rule in ("invalid_sizes", "invalid_numbers", "replayed_key_id_fails", "extensions"):
        assert got[rule] == "fail", rule
    assert got["multicast"] == "skip" and got["other_sae_cannot_fetch"] == "skip"


# -- a deliberately lax KME (plain HTTP, identity from a header): right data format, too few rules ---------------
@pytest.fixture
def lax_kme():
    keys: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def params(self) -> dict:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                try:
                    query.update(json.loads(self.rfile.read(length)))
                except ValueError:
                    return {"__bad__": True}
            return query

        def handle_call(self) -> None:
            parts = urlsplit(self.path).path.strip("/").split("/")  # api v1 keys <sae> <call>
            sae, call, p = parts[3], parts[4], self.params()
            caller = self.headers.get("X-SAE-ID", "")
            if "__bad__" in p:
                return self.answer(400, {"message": "bad JSON"})
            if call == "status":
                return self.answer(200, {"source_KME_ID": "A", "target_KME_ID": "B", "master_SAE_ID": caller,
                                         "slave_SAE_ID": sae, "key_size": 256, "stored_key_count": 100,
                                         "max_key_count": 1000, "max_key_per_request": 10, "max_key_size": 1024,
                                         "min_key_size": 64, "max_SAE_ID_count": 0})
            if sae == caller or sae.startswith("sae-that-does-not-exist"):
                return self.answer(400, {"message": "bad SAE"})
            if call == "enc_keys":
                try:  # lax: any number, any size (a negative one becomes empty keys)
                    number, size = abs(int(p.get("number", 1))), abs(int(p.get("size", 256)))
                except ValueError:
                    return self.answer(400, {"message": "not a number"})
                if p.get("additional_slave_SAE_IDs"):
                    return self.answer(400, {"message": "no multicast"})
                out = []
                for _ in range(number):
                    key_id = str(uuid.uuid4())
                    keys[key_id] = base64.b64encode(os.urandom(size // 8)).decode()
                    out.append({"key_ID": key_id, "key": keys[key_id]})
                return self.answer(200, {"keys": out})
            ids = [p["key_ID"]] if "key_ID" in p else [k.get("key_ID") for k in p.get("key_IDs", [])]
            if not ids or any(i not in keys for i in ids) or sae == "sae-b":
                return self.answer(400, {"message": "unknown key_ID"})
            return self.answer(200, {"keys": [{"key_ID": i, "key": keys[i]} for i in ids]})  # lax: never removed

        do_GET = do_POST = handle_call

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
