"""ETSI GS QKD 004 V2.1.1 key streams over REST (/api/open_connect, /api/get_key, /api/close)."""

from __future__ import annotations

import base64
import json
import time
import uuid

A, B = "sae-cait-1", "sae-rectorado-1"


def call(twin, sae, method, path, **kwargs):
    with twin.session(sae) as s:
        r = s.request(method, twin.url(twin.node_of(sae)) + path, timeout=20, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def open_pair(twin, qos=None):
    opened = call(twin, A, "POST", "/api/open_connect",
                  json={"source": f"sae://{A}", "destination": f"sae://{B}", "QoS": qos or {"Key_chunk_size": 32}})
    assert opened["status"] == 1, opened  # successful, peer not connected yet
    ksid = opened["Key_stream_ID"]
    joined = call(twin, B, "POST", "/api/open_connect",
                  json={"source": f"sae://{B}", "destination": f"sae://{A}", "Key_stream_ID": ksid, "QoS": {}})
    assert joined["status"] == 0 and joined["Key_stream_ID"] == ksid
    return ksid


def test_both_peers_get_the_same_chunk_for_the_same_index(madqci):
    ksid = open_pair(madqci, {"Key_chunk_size": 64, "Min_bps": 1000, "Max_bps": 40000, "TTL": 60})
    # The peer asks first for index 0, the initiator first for index 1: same bytes either way.
    b0 = call(madqci, B, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 0})
    a1 = call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 1})
    a0 = call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 0})
    b1 = call(madqci, B, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 1})
    assert all(r["status"] == 0 for r in (a0, a1, b0, b1))
    assert a0["key_buffer"] == b0["key_buffer"] and a1["key_buffer"] == b1["key_buffer"]
    assert a0["key_buffer"] != a1["key_buffer"]
    assert len(base64.b64decode(a0["key_buffer"])) == 64
    assert a0["Metadata"]["hops"] == 2
    # Without an index, each side continues with the next one.
    a2 = call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid})
    b2 = call(madqci, B, "POST", "/api/get_key", json={"Key_stream_ID": ksid})
    assert a2["index"] == b2["index"] == 2 and a2["key_buffer"] == b2["key_buffer"]
    # A chunk goes to each application once.
    assert call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 0})["status"] == 2
    assert call(madqci, A, "POST", "/api/close", json={"Key_stream_ID": ksid})["status"] == 0
    # Closed at both ends: the peer's calls get status 4 (the connection is no more), closing again is done.
    after = call(madqci, B, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 3})
    assert after["status"] == 4 and "key_buffer" not in after
    assert call(madqci, B, "POST", "/api/close", json={"Key_stream_ID": ksid})["status"] == 0
    with madqci.session(B) as s:  # an ID that never was a stream is still a 400
        r = s.get(madqci.url("Rectorado") + "/api/get_key", params={"Key_stream_ID": str(uuid.uuid4())})
    assert r.status_code == 400


def test_qos_beyond_the_path_gets_a_counter_proposal(madqci):
    # The offer is the slowest hop of CAIT-CCS-Rectorado times the twin's time scale. The links' rates move with
    # every block they produce, so compare only when no block landed between the reads around the request.
    def slowest() -> float:
        return min(link["secret_key_rate_bps"] for link in madqci.topology_view()["links"])

    for _ in range(20):  # bounded: a quiet moment comes within a few tries
        before = slowest()
        opened = call(madqci, A, "POST", "/api/open_connect",
                      json={"source": A, "destination": B, "QoS": {"Min_bps": 10**12, "Max_bps": 10**12}})
        if slowest() == before:
            break
    else:
        raise AssertionError("a block landed around every one of 20 requests")
    assert opened["status"] == 7 and opened["Key_stream_ID"] is None
    offer = opened["QoS"]["Min_bps"]
    assert offer == int(before * madqci.endpoints["time_scale"])
    accepted = call(madqci, A, "POST", "/api/open_connect",
                    json={"source": A, "destination": B, "QoS": {"Min_bps": offer, "Max_bps": 10**12}})
    assert accepted["status"] == 1 and accepted["QoS"]["Max_bps"] == offer


def test_peer_not_connected_and_stream_id_in_use(madqci):
    opened = call(madqci, A, "POST", "/api/open_connect", json={"source": A, "destination": B})
    ksid = opened["Key_stream_ID"]
    assert call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid})["status"] == 3
    join = {"source": B, "destination": A, "Key_stream_ID": ksid}
    assert call(madqci, B, "POST", "/api/open_connect", json=join)["status"] == 0
    assert call(madqci, B, "POST", "/api/open_connect", json=join)["status"] == 5


def test_a_stream_expires_after_its_ttl(madqci):
    ksid = open_pair(madqci, {"TTL": 1})
    assert call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid})["status"] == 0
    deadline = time.monotonic() + 10  # bounded wait for the TTL to run out
    while (status := call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid})["status"]) == 0:
        assert time.monotonic() < deadline, "the stream outlived its TTL"
        time.sleep(0.1)
    assert status == 4
    assert call(madqci, B, "GET", "/api/get_key", params={"Key_stream_ID": ksid})["status"] == 4


def test_metadata_buffer_too_small_is_status_8(madqci):
    ksid = open_pair(madqci)
    r = call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "metadata_size": 4})
    assert r["status"] == 8


def test_only_the_stream_applications_may_use_it(madqci):
    ksid = open_pair(madqci)
    with madqci.session("sae-rectorado-2") as s:
        r = s.get(madqci.url("Rectorado") + "/api/get_key", params={"Key_stream_ID": ksid})
    assert r.status_code == 401
    with madqci.session(A) as s:  # the source must be the caller
        r = s.post(madqci.url("CAIT") + "/api/open_connect", json={"source": "sae-cait-2", "destination": B})
    assert r.status_code == 401


def test_no_path_is_status_4(twin_factory):
    twin = twin_factory("madqci", time_scale=50.0)
    twin.admin("ccs-rectorado", "cut")
    assert call(twin, A, "POST", "/api/open_connect", json={"source": A, "destination": B})["status"] == 4


def test_no_key_within_the_qos_timeout_is_status_6(twin_factory):
    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key(A, B)
    ksid = open_pair(twin, {"Timeout": 300})
    assert call(twin, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid})["status"] == 0
    twin.admin("cait-ccs", "cut")
    twin.admin("cait-ccs", "drain")
    # chunk 0 exists at both ends already; chunk 1 needs new link key, which cannot come: status 6 once the
    # QoS Timeout has passed, and the chunk is not lost
    assert call(twin, B, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 1})["status"] == 6
    twin.admin("cait-ccs", "restore")
    deadline = time.monotonic() + 10
    while (chunk := call(twin, B, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 1}))["status"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    peer = call(twin, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 1})
    assert peer["status"] == 0 and peer["key_buffer"] == chunk["key_buffer"]  # the same chunk at both ends


def test_one_json_binding_lower_case_names_are_honoured_unknown_fields_refused(madqci):
    opened = call(madqci, A, "POST", "/api/open_connect",
                  json={"source": f"qkd://{A}:443/app", "destination": f"sae://user@{B}",
                        "qos": {"Key_chunk_size": 16}})
    assert opened["status"] == 1 and opened["QoS"]["Key_chunk_size"] == 16  # not silently the default 32
    ksid = opened["Key_stream_ID"]
    joined = call(madqci, B, "POST", "/api/open_connect",
                  json={"source": B, "destination": A, "key_stream_id": ksid})
    assert joined["status"] == 0 and joined["Key_stream_ID"] == ksid  # a join, not a new stream
    chunk = call(madqci, A, "POST", "/api/get_key", json={"key_stream_id": ksid, "INDEX": 0})
    assert chunk["status"] == 0 and len(base64.b64decode(chunk["key_buffer"])) == 16
    with madqci.session(A) as s:
        for path, body in (("/api/open_connect", {"source": A, "destination": B, "QOS_typo": {}}),
                           ("/api/close", {"Key_stream_ID": ksid, "force": True})):
            r = s.post(madqci.url("CAIT") + path, json=body)
            assert r.status_code == 400 and "unknown field" in r.json()["message"], r.text
        r = s.get(madqci.url("CAIT") + "/api/get_key", params={"Key_stream_ID": ksid, "idx": 1})
        assert r.status_code == 400 and "unknown field" in r.json()["message"]


def test_qos_granted_as_enforced_and_counter_proposed_mimetype(madqci):
    opened = call(madqci, A, "POST", "/api/open_connect",
                  json={"source": A, "destination": B, "QoS": {"Timeout": 60000}})
    assert opened["status"] == 1 and opened["QoS"]["Timeout"] == 10000
    other = call(madqci, A, "POST", "/api/open_connect",
                 json={"source": A, "destination": B, "QoS": {"Metadata_mimetype": "text/plain"}})
    assert other["status"] == 7 and other["Key_stream_ID"] is None
    assert other["QoS"]["Metadata_mimetype"] == "application/json"


def test_status_8_says_exactly_the_metadata_size_needed(madqci):
    ksid = open_pair(madqci)
    small = call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 0, "metadata_size": 4})
    assert small["status"] == 8 and "key_buffer" not in small
    needed = small["metadata_size_needed"]
    assert call(madqci, A, "GET", "/api/get_key",
                params={"Key_stream_ID": ksid, "index": 0, "metadata_size": needed - 1})["status"] == 8
    chunk = call(madqci, A, "GET", "/api/get_key", params={"Key_stream_ID": ksid, "index": 0, "metadata_size": needed})
    assert chunk["status"] == 0
    assert len(json.dumps(chunk["Metadata"], separators=(",", ":")).encode()) == needed
