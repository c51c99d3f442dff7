"""The ETSI GS QKD 014/004 conformance probe (services.sdqkd.conformance) against the twin's KMEs and the portal
(the key gateway with SAE certificates and the web listener with tokens), and against a deliberately lax KME to
show that it catches what it claims to."""

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

from services.sdqkd.conformance import Probe, ProbeTarget, SaeIdentity, probe, run_probe
from tenants.services import set_quota_overrides
from tests.services.test_mtls import write_bundle

ROOT = Path(__file__).resolve().parents[2]


def verdicts(results) -> dict[str, str]:
    return {r.name: r.outcome for r in results}


def assert_all_pass(results) -> None:
    bad = [f"{r.name}: {r.outcome} {r.detail}" for r in results if r.outcome != "pass"]
    assert not bad, "\n".join(bad)
    assert [r.name for r in results] == list(Probe.CHECKS)


LAST = ("exhaustion_is_503", "no_stray_statuses")


def run_all_then_exhaust(target: ProbeTarget, exhaust) -> list:
    """Every check on one probe; ``exhaust()`` (drain a link, lower a quota) runs before the last two."""
    with probe(target) as p:
        results = p.run([c for c in Probe.CHECKS if c not in LAST])
        exhaust()
        return results + p.run(list(LAST))


def test_the_twin_kmes_conform_including_relay_and_multicast(twin_factory):
    twin = twin_factory("madqci")
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=50)

    def sae(name: str) -> SaeIdentity:
        return SaeIdentity(name, *twin.sae_cert(name))

    # CAIT -> Rectorado is relayed through CCS: dec_keys is asked at Rectorado's own KME.
    target = ProbeTarget(twin.url("CAIT"), twin.ca, sae("sae-cait-1"), sae("sae-rectorado-1"),
                         extra_slave=sae("sae-rectorado-2"), outsider=sae("sae-cait-2"),
                         slave_base_url=twin.url("Rectorado"), etsi004_url=twin.url("CAIT") + "/api",
                         etsi004_slave_url=twin.url("Rectorado") + "/api")

    def exhaust() -> None:
        twin.admin("cait-ccs", "cut")
        twin.admin("cait-ccs", "drain")

    assert_all_pass(run_all_then_exhaust(target, exhaust))


@pytest.mark.postgres
def test_the_portal_etsi014_listener_conforms_with_tenant_sae_bundles(https_portal, make_lab, tmp_path):
    lab = make_lab("probe")
    lab.add_sae("probe-rect-2", "Rectorado")
    lab.add_sae("probe-cait-2", "CAIT")
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": -1, "qkd_key_bits.month": -1})  # the probe draws a lot
    ca = tmp_path / "ca.pem"
    ca.write_text(lab.bundles["probe-cait"]["ca_chain"])

    def sae(name: str) -> SaeIdentity:
        return SaeIdentity(name, *write_bundle(tmp_path, name, lab.bundles[name]))

    target = ProbeTarget(https_portal, str(ca), sae("probe-cait"), sae("probe-rect"),
                         extra_slave=sae("probe-rect-2"), outsider=sae("probe-cait-2"),
                         etsi004_url=f"{https_portal}/api/etsi004")

    def exhaust() -> None:  # the tenant's quota runs out: 503 on the 014 paths
        set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 1, "qkd_key_bits.month": -1})

    assert_all_pass(run_all_then_exhaust(target, exhaust))


@pytest.mark.postgres
def test_the_portal_web_listener_conforms_with_tokens(https_and_web, make_lab, client_for):
    _, web = https_and_web
    lab = make_lab("probe")
    lab.add_sae("probe-rect-2", "Rectorado")
    lab.add_sae("probe-cait-2", "CAIT")
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": -1, "qkd_key_bits.month": -1})  # the probe draws a lot
    token = client_for(lab.owner, lab.tenant, ["keys:read", "keys:write"]).token_secret

    def sae(name: str) -> SaeIdentity:
        return SaeIdentity(name, headers={"Authorization": f"Bearer {token}", "X-SAE-ID": name})

    target = ProbeTarget(web, False, sae("probe-cait"), sae("probe-rect"), extra_slave=sae("probe-rect-2"),
                         outsider=sae("probe-cait-2"), etsi004_url=f"{web}/api/etsi004")

    def exhaust() -> None:
        set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 1, "qkd_key_bits.month": -1})

    results = run_all_then_exhaust(target, exhaust)
    verdict = {r.name: f"{r.outcome} {r.detail}" for r in results}
    # Tokens, not certificates: the check of a request without a certificate does not apply.
    assert verdict.pop("no_client_identity_refused").startswith("skip")
    assert {n: v for n, v in verdict.items() if not v.startswith("pass")} == {}
    assert len(results) == len(Probe.CHECKS)


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
    """A KME with the right data format and too few rules fails exactly the checks of the rules it lacks."""
    target = ProbeTarget(lax_kme, False, SaeIdentity("sae-a", headers={"X-SAE-ID": "sae-a"}),
                         SaeIdentity("sae-b", headers={"X-SAE-ID": "sae-b"}),
                         outsider=SaeIdentity("sae-c", headers={"X-SAE-ID": "sae-c"}),
                         etsi004_url=lax_kme + "/api", exhaust_attempts=5)
    got = verdicts(run_probe(target))
    for rule in ("status_fields", "round_trip_post", "round_trip_get", "default_request_get"):
        assert got[rule] == "pass", rule
    lacking = ("invalid_sizes", "invalid_numbers", "replayed_key_id_fails", "extensions", "other_sae_cannot_fetch",
               # the rules the probe gained with the 014 letter and the 004 section
               "size_not_multiple_of_8", "fixed_messages", "null_and_empty_optionals",
               "content_types_of_the_standards_clients", "exhaustion_is_503", "no_stray_statuses",
               "e004_stream_lifecycle", "e004_qos_counter_proposal", "e004_metadata_size", "e004_one_json_binding")
    assert {rule: got[rule] for rule in lacking} == dict.fromkeys(lacking, "fail")
    assert got["multicast"] == "skip"


def test_a_kme_that_serves_sizes_not_multiple_of_8_is_not_failed_for_it(lax_kme):
    """The standard lets a KME accept such a size: serving it passes (only refusing with other words fails)."""
    target = ProbeTarget(lax_kme, False, SaeIdentity("sae-a", headers={"X-SAE-ID": "sae-a", "X-Lax-Sizes": "1"}),
                         SaeIdentity("sae-b", headers={"X-SAE-ID": "sae-b"}))
    assert verdicts(run_probe(target, ["size_not_multiple_of_8"])) == {"size_not_multiple_of_8": "pass"}


# -- a deliberately lax KME (plain HTTP, identity from a header): right data format, too few rules ---------------
@pytest.fixture
def lax_kme():
    keys: dict[str, str] = {}
    streams: dict[str, dict] = {}
    drawn = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def answer(self, code: int, body: dict, kind: str = "application/json") -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
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

        def handle_004(self, call: str, p: dict) -> None:
            # lax: unknown fields ignored, lower-case key_stream_id unknown (a new stream), no counter-proposal,
            # no status 5 or 8, a closed stream is a 400
            ksid = p.get("Key_stream_ID")
            if call == "open_connect":
                if ksid in streams:
                    return self.answer(200, {"status": 0, "Key_stream_ID": ksid, "QoS": {}})
                ksid = str(uuid.uuid4())
                streams[ksid] = {"chunks": {}}
                return self.answer(200, {"status": 1, "Key_stream_ID": ksid, "QoS": p.get("QoS") or {}})
            if ksid not in streams:
                return self.answer(400, {"message": "unknown stream"})
            if call == "close":
                del streams[ksid]
                return self.answer(200, {"status": 0, "Key_stream_ID": ksid})
            index = int(p.get("index", 0))
            chunk = streams[ksid]["chunks"].setdefault(index, base64.b64encode(os.urandom(32)).decode())
            return self.answer(200, {"status": 0, "Key_stream_ID": ksid, "index": index, "key_buffer": chunk,
                                     "Metadata": {"index": index}})

        def handle_call(self) -> None:
            parts = urlsplit(self.path).path.strip("/").split("/")  # api v1 keys <sae> <call>
            if self.headers.get("Content-Type", "").startswith("text/plain"):
                return self.answer(415, {"message": "unsupported media type"}, kind="text/plain")
            p = self.params()
            if parts[:1] == ["api"] and len(parts) == 2:
                return self.handle_004(parts[1], p)
            sae, call = parts[3], parts[4]
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
                try:  # lax: any number, any size (a negative one becomes empty keys); null is not absent
                    number, size = abs(int(p.get("number", 1))), abs(int(p.get("size", 256)))
                except (TypeError, ValueError):
                    return self.answer(400, {"message": "not a number"})
                if size % 8 and not self.headers.get("X-Lax-Sizes"):
                    return self.answer(400, {"message": "bad size"})  # not the standard's words
                drawn[0] += 1
                if number * size >= 1024 * 8 and drawn[0] > 3:
                    return self.answer(429, {"message": "no more key"})  # not 014's 503
                if p.get("additional_slave_SAE_IDs"):
                    return self.answer(400, {"message": "no multicast"})
                out = []
                for _ in range(number):
                    key_id = str(uuid.uuid4())
                    keys[key_id] = base64.b64encode(os.urandom(size // 8)).decode()
                    out.append({"key_ID": key_id, "key": keys[key_id]})
                return self.answer(200, {"keys": out})
            ids = [p["key_ID"]] if "key_ID" in p else [k.get("key_ID") for k in p.get("key_IDs", [])]
            if not ids or any(i not in keys for i in ids) or sae == "sae-b":  # lax: any caller gets any key
                return self.answer(400, {"message": "unknown key_ID"})
            return self.answer(200, {"keys": [{"key_ID": i, "key": keys[i]} for i in ids]})  # lax: never removed

        do_GET = do_POST = handle_call

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
