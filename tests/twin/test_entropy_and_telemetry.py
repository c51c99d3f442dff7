"""The simulated QRNG endpoint, telemetry (Prometheus text and topology JSON), admin API and fault injection."""

from __future__ import annotations

import re
import time

import requests

MASTER = "sae-cait-1"


def test_entropy_contract(madqci):
    with madqci.session(MASTER) as s:
        r = s.get(madqci.url("Rectorado") + "/api/v1/entropy", params={"bytes": 4096})
        again = s.get(madqci.url("Rectorado") + "/api/v1/entropy", params={"bytes": 4096})
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["X-Entropy-Source"] == "twin-simulated" and r.headers["X-Entropy-Simulated"] == "true"
        assert len(r.content) == 4096 and r.content != again.content
        assert len(s.get(madqci.url("CAIT") + "/api/v1/entropy", params={"bytes": 1 << 20}).content) == 1 << 20
        for bad in ("0", str((1 << 20) + 1), "x"):
            assert s.get(madqci.url("CAIT") + "/api/v1/entropy", params={"bytes": bad}).status_code == 400
    anonymous = requests.get(madqci.url("CAIT") + "/api/v1/entropy?bytes=16", verify=madqci.ca, timeout=10)
    assert anonymous.status_code == 401


def test_prometheus_metrics(madqci):
    with madqci.session(portal=True) as s:
        text = s.get(madqci.url("CCS") + "/metrics").text
    samples = dict(re.findall(r"^(\w+\{[^}]*\}) (\S+)$", text, flags=re.M))
    assert float(samples['qkd_link_up{link="cait-ccs",technology="dv-bb84-decoy"}']) == 1
    assert 0 < float(samples['qkd_link_qber{link="ccs-rectorado",technology="dv-bb84-decoy"}']) < 0.05
    assert float(samples['qkd_link_secret_key_rate_bps{link="ccs-rectorado",technology="dv-bb84-decoy"}']) > 1e5
    assert 'qkd_node_keys_delivered_total{node="CAIT"}' in samples
    assert "# TYPE qkd_link_keys_consumed_bits_total counter" in text


def test_topology_json_describes_madqci(madqci):
    view = madqci.topology_view()
    assert [n["id"] for n in view["nodes"]] == ["CAIT", "CCS", "Rectorado"]
    links = {link["id"]: link for link in view["links"]}
    assert links["cait-ccs"]["loss_db"] <= 3.0  # the short O-band span
    assert abs(links["ccs-rectorado"]["loss_db"] - 10.0) < 0.5  # the 23 km C-band span
    assert links["ccs-rectorado"]["secret_key_rate_bps"] > links["cait-ccs"]["secret_key_rate_bps"]
    for link in links.values():
        assert link["state"] == "up" and 0 <= link["key_store_fill_bits"] <= link["key_store_capacity_bits"]


def test_admin_is_for_the_portal_only(madqci):
    with madqci.session(MASTER) as s:
        assert s.post(madqci.url("CAIT") + "/api/v1/admin/links/cait-ccs/cut").status_code == 401
    assert madqci.link_view("cait-ccs")["state"] == "up"


def test_attenuation_changes_the_rate_and_the_fill_growth(twin_factory):
    twin = twin_factory("madqci", time_scale=1.0)
    link = "ccs-rectorado"
    base = twin.link_view(link)
    changed = twin.admin(link, "physics", {"total_loss_db": 25.0})
    assert changed["loss_db"] == 25.0
    assert changed["secret_key_rate_bps"] < base["secret_key_rate_bps"] / 10
    assert changed["qber"] > base["qber"]
    # Key now arrives at the lower rate: the blocks produced under the new physics carry fewer final bits per
    # second of simulated link time (the twin's own counters and clock, not the test's wall clock).
    first = changed["protocol"]["last_block"]["block"]
    deadline = time.monotonic() + 30  # bounded wait for a block produced wholly under the new physics
    while (block := twin.link_view(link)["protocol"]["last_block"])["block"] < first + 2:
        assert time.monotonic() < deadline, "no new block under the new physics"
        time.sleep(0.1)
    measured = block["final_bits"] / block["block_duration_s"]
    assert measured <= 2 * changed["secret_key_rate_bps"]
    assert measured < base["secret_key_rate_bps"] / 3
    r = requests.Session()
    r.trust_env = False
    bad = r.post(twin.url("CAIT") + f"/api/v1/admin/links/{link}/physics", json={"no_such": 1},
                 cert=twin.portal_cert, verify=twin.ca, timeout=10)
    assert bad.status_code == 400 and bad.json()["details"] == [{"no_such": "unknown parameter"}]


def test_a_full_store_pauses_generation(twin_factory):
    twin = twin_factory("madqci", time_scale=200.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        view = twin.link_view("cait-ccs")
        if view["key_store_fill_bits"] + 65536 > view["key_store_capacity_bits"]:
            break
        time.sleep(0.05)
    produced = twin.link_view("cait-ccs")["blocks_produced"]
    time.sleep(0.5)
    view = twin.link_view("cait-ccs")
    assert view["blocks_produced"] == produced
    assert view["key_store_fill_bits"] <= view["key_store_capacity_bits"]


def test_insecure_http_mode_takes_the_sae_from_the_header(twin_factory):
    twin = twin_factory("madqci", time_scale=50.0, insecure=True)
    assert twin.url("CAIT").startswith("http://")
    twin.wait_for_key(MASTER, "sae-ccs-1")
    keys = twin.enc_keys(MASTER, "sae-ccs-1").json()["keys"]
    assert twin.dec_keys("sae-ccs-1", MASTER, [keys[0]["key_ID"]]).json()["keys"][0]["key"] == keys[0]["key"]
