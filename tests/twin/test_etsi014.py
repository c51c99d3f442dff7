"""ETSI GS QKD 014 V1.1.1 against the running madqci twin, over HTTPS with mutual TLS."""

from __future__ import annotations

import base64
import ssl
import uuid
from pathlib import Path

import pytest
import requests

from services.sdqkd.twin.pki import TwinPKI

MASTER, SLAVE, OTHER_AT_SLAVE_NODE = "sae-cait-1", "sae-rectorado-1", "sae-rectorado-2"


def enc_url(twin, master: str, slave: str, call: str = "enc_keys") -> str:
    return f"{twin.url(twin.node_of(master))}/api/v1/keys/{slave}/{call}"


def assert_etsi_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body.get("details", []), list)
    return body


# -- status ------------------------------------------------------------------------------------------------
def test_status_describes_the_pair_and_the_limits(madqci):
    with madqci.session(MASTER) as s:
        status = s.get(enc_url(madqci, MASTER, SLAVE, "status")).json()
    assert status["source_KME_ID"] == "CAIT" and status["target_KME_ID"] == "Rectorado"
    assert status["master_SAE_ID"] == MASTER and status["slave_SAE_ID"] == SLAVE
    assert status["key_size"] == 256 and status["min_key_size"] == 64 and status["max_key_size"] == 8192
    assert status["max_key_per_request"] == 1024 and status["max_SAE_ID_count"] > 0
    assert 0 < status["stored_key_count"] <= status["max_key_count"]


def test_status_for_an_unknown_slave_is_400(madqci):
    with madqci.session(MASTER) as s:
        assert_etsi_error(s.get(enc_url(madqci, MASTER, "no-such-sae", "status")), 400)


# -- enc_keys / dec_keys -----------------------------------------------------------------------------------
def test_get_enc_keys_with_defaults_gives_one_key_of_key_size(madqci):
    with madqci.session(MASTER) as s:
        body = s.get(enc_url(madqci, MASTER, SLAVE)).json()
    (key,) = body["keys"]
    assert uuid.UUID(key["key_ID"]).version == 8  # RFC 9562 custom layout: batch ID + index
    assert len(base64.b64decode(key["key"])) == 32


def test_get_enc_keys_with_query_parameters(madqci):
    with madqci.session(MASTER) as s:
        body = s.get(enc_url(madqci, MASTER, SLAVE), params={"number": 3, "size": 512}).json()
    assert [len(base64.b64decode(k["key"])) for k in body["keys"]] == [64, 64, 64]


def test_relayed_keys_reach_the_slave_identical_and_only_once(madqci):
    consumed_before = {link: madqci.link_view(link)["keys_consumed_bits"] for link in ("cait-ccs", "ccs-rectorado")}
    relayed_before = next(n for n in madqci.topology_view()["nodes"] if n["id"] == "CCS")["relay_hops"]

    response = madqci.enc_keys(MASTER, SLAVE, number=4, size=256)
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    assert len({k["key_ID"] for k in keys}) == 4
    for key in keys:
        assert key["key_ID_extension"] == {"hops": 2, "path": ["CAIT", "CCS", "Rectorado"]}

    fetched = madqci.dec_keys(SLAVE, MASTER, [k["key_ID"] for k in keys])
    assert fetched.status_code == 200, fetched.text
    assert [(k["key_ID"], k["key"]) for k in fetched.json()["keys"]] == [(k["key_ID"], k["key"]) for k in keys]

    # Each hop consumed link key: the keys (4 x 256 bits) plus a 256-bit one-time MAC key.
    for link, before in consumed_before.items():
        assert madqci.link_view(link)["keys_consumed_bits"] - before >= 4 * 256 + 256
    ccs = next(n for n in madqci.topology_view()["nodes"] if n["id"] == "CCS")
    assert ccs["relay_hops"] == relayed_before + 1

    assert_etsi_error(madqci.dec_keys(SLAVE, MASTER, [keys[0]["key_ID"]]), 400)  # replay


def test_direct_neighbours_use_the_link_key(madqci):
    response = madqci.enc_keys(MASTER, "sae-ccs-1", number=2)
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert keys[0]["key_ID_extension"]["hops"] == 1
    got = madqci.dec_keys("sae-ccs-1", MASTER, [k["key_ID"] for k in keys]).json()["keys"]
    assert [k["key"] for k in got] == [k["key"] for k in keys]


def test_get_dec_keys_with_a_key_id_query(madqci):
    key = madqci.enc_keys(MASTER, SLAVE).json()["keys"][0]
    with madqci.session(SLAVE) as s:
        got = s.get(enc_url(madqci, SLAVE, MASTER, "dec_keys"), params={"key_ID": key["key_ID"]}).json()
    assert got["keys"][0]["key"] == key["key"]


def test_same_node_pair_gets_keys_without_a_link(madqci):
    keys = madqci.enc_keys(MASTER, "sae-cait-2", number=2).json()["keys"]
    assert keys[0]["key_ID_extension"]["hops"] == 0
    got = madqci.dec_keys("sae-cait-2", MASTER, [k["key_ID"] for k in keys]).json()["keys"]
    assert [k["key"] for k in got] == [k["key"] for k in keys]


def test_multicast_gives_every_slave_the_same_keys(madqci):
    response = madqci.enc_keys(MASTER, SLAVE, number=2, additional_slave_SAE_IDs=[OTHER_AT_SLAVE_NODE, "sae-ccs-1"])
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    ids = [k["key_ID"] for k in keys]
    for slave in (SLAVE, OTHER_AT_SLAVE_NODE, "sae-ccs-1"):
        got = madqci.dec_keys(slave, MASTER, ids)
        assert got.status_code == 200, (slave, got.text)
        assert [k["key"] for k in got.json()["keys"]] == [k["key"] for k in keys]
    assert_etsi_error(madqci.dec_keys(OTHER_AT_SLAVE_NODE, MASTER, ids), 400)  # each slave once


def test_a_key_is_refused_to_an_sae_it_was_not_issued_for(madqci):
    key = madqci.enc_keys(MASTER, SLAVE).json()["keys"][0]
    assert_etsi_error(madqci.dec_keys(OTHER_AT_SLAVE_NODE, MASTER, [key["key_ID"]]), 401)
    # ... and it is still there for its slave.
    assert madqci.dec_keys(SLAVE, MASTER, [key["key_ID"]]).json()["keys"][0]["key"] == key["key"]


def test_dec_keys_names_the_master_in_the_path(madqci):
    key = madqci.enc_keys(MASTER, SLAVE).json()["keys"][0]
    assert_etsi_error(madqci.dec_keys(SLAVE, "sae-cait-2", [key["key_ID"]]), 400)
    assert madqci.dec_keys(SLAVE, MASTER, [key["key_ID"]]).status_code == 200


def test_dec_keys_is_all_or_nothing(madqci):
    key = madqci.enc_keys(MASTER, SLAVE).json()["keys"][0]
    body = assert_etsi_error(madqci.dec_keys(SLAVE, MASTER, [key["key_ID"], str(uuid.uuid4())]), 400)
    assert body["details"][0]["reason"]
    assert madqci.dec_keys(SLAVE, MASTER, [key["key_ID"]]).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"size": 100},  # not a multiple of 8
        {"size": 32},  # below min_key_size
        {"size": 16384},  # above max_key_size
        {"size": "256"},
        {"number": 0},
        {"number": 1025},  # above max_key_per_request
        {"number": True},
        {"number": -8},
        {"size": 0},
        {"size": -8},
        {"size": "abc01"},
        {"additional_slave_SAE_IDs": [" "]},
        {"additional_slave_SAE_IDs": ["no-such-sae"]},
        {"additional_slave_SAE_IDs": ["sae-rectorado-1"]},  # the slave twice
        {"additional_slave_SAE_IDs": ["sae-cait-1"]},  # the master itself
        {"additional_slave_SAE_IDs": ["sae-rectorado-2", "sae-ccs-1", "sae-cait-2", "a", "b"]},  # > max_SAE_ID_count
        {"extension_mandatory": [{"abc_route_type": "direct"}]},  # unknown mandatory extension
        {"extension_mandatory": {"not": "a list"}},
    ],
)
def test_invalid_key_requests_are_400(madqci, body):
    assert_etsi_error(madqci.enc_keys(MASTER, SLAVE, **body), 400)


@pytest.mark.parametrize("body, message, details", [
    ({"size": 100}, "size shall be a multiple of 8", [{"size": 100}]),
    ({"extension_mandatory": [{"abc_route_type": "direct"}, {}]},
     "not all extension_mandatory parameters are supported",
     [{"extension_mandatory_unsupported": ["abc_route_type"]}]),
])
def test_the_standards_fixed_messages(madqci, body, message, details):
    body = assert_etsi_error(madqci.enc_keys(MASTER, SLAVE, **body), 400)
    assert body["message"] == message and body["details"] == details


@pytest.mark.parametrize("body", [
    {"number": None, "size": None, "additional_slave_SAE_IDs": None, "extension_mandatory": None,
     "extension_optional": None},
    {"additional_slave_SAE_IDs": [], "extension_mandatory": [], "extension_optional": []},
    {"extension_mandatory": [{}]},
], ids=["null is absent", "empty lists are none", "an empty object is no extension"])
def test_optional_fields_may_be_null_or_empty(madqci, body):
    response = madqci.enc_keys(MASTER, SLAVE, **body)
    assert response.status_code == 200, response.text
    assert len(response.json()["keys"]) == 1 and len(base64.b64decode(response.json()["keys"][0]["key"])) == 32


def test_unknown_key_ids_get_the_standards_message(madqci):
    body = assert_etsi_error(madqci.dec_keys(SLAVE, MASTER, [str(uuid.uuid4())]), 400)
    assert body["message"] == "one or more keys specified are not found on KME"


@pytest.mark.parametrize("query", [{"size": "0"}, {"size": "-8"}, {"size": "abc01"}, {"number": "0"},
                                   {"number": "-8"}, {"number": "abc01"}])
def test_invalid_get_queries_are_400(madqci, query):
    with madqci.session(MASTER) as s:
        assert_etsi_error(s.get(enc_url(madqci, MASTER, SLAVE), params=query), 400)


def test_blank_or_own_sae_id_in_the_path_is_400(madqci):
    some_key = str(uuid.uuid4())
    with madqci.session(MASTER) as s:
        for slave in ("%20", MASTER):
            assert_etsi_error(s.get(enc_url(madqci, MASTER, slave)), 400)
            assert_etsi_error(s.post(enc_url(madqci, MASTER, slave)), 400)
            assert_etsi_error(s.get(enc_url(madqci, MASTER, slave, "dec_keys"), params={"key_ID": some_key}), 400)
            assert_etsi_error(s.post(enc_url(madqci, MASTER, slave, "dec_keys"),
                                     json={"key_IDs": [{"key_ID": some_key}]}), 400)


def test_unknown_optional_extensions_are_ignored(madqci):
    assert madqci.enc_keys(MASTER, SLAVE, extension_optional=[{"abc_route_type": "direct"}]).status_code == 200


def test_malformed_json_and_bad_query_are_400(madqci):
    with madqci.session(MASTER) as s:
        assert_etsi_error(s.post(enc_url(madqci, MASTER, SLAVE), data=b"{not json"), 400)
        assert_etsi_error(s.get(enc_url(madqci, MASTER, SLAVE), params={"number": "two"}), 400)
        assert_etsi_error(s.post(enc_url(madqci, MASTER, SLAVE), json=[1, 2]), 400)
    with madqci.session(SLAVE) as s:
        assert_etsi_error(s.post(enc_url(madqci, SLAVE, MASTER, "dec_keys"), json={"key_IDs": [{"key_ID": "x"}]}), 400)
        assert_etsi_error(s.post(enc_url(madqci, SLAVE, MASTER, "dec_keys"), json={"key_IDs": []}), 400)
        assert_etsi_error(s.get(enc_url(madqci, SLAVE, MASTER, "dec_keys")), 400)


def test_max_key_per_request_keys_in_one_call(madqci):
    madqci.wait_for_key(MASTER, SLAVE, count=1024)
    keys = madqci.enc_keys(MASTER, SLAVE, number=1024, size=64).json()["keys"]
    assert len(keys) == 1024 and len({k["key_ID"] for k in keys}) == 1024
    got = madqci.dec_keys(SLAVE, MASTER, [k["key_ID"] for k in keys]).json()["keys"]
    assert {k["key_ID"]: k["key"] for k in got} == {k["key_ID"]: k["key"] for k in keys}


# -- identities (mutual TLS) -------------------------------------------------------------------------------
def test_an_sae_must_call_its_own_kme(madqci):
    with madqci.session(MASTER) as s:  # CAIT's SAE at Rectorado's KME
        assert_etsi_error(s.get(f"{madqci.url('Rectorado')}/api/v1/keys/sae-ccs-1/status"), 401)


def test_no_client_certificate_is_401(madqci):
    r = requests.get(enc_url(madqci, MASTER, SLAVE, "status"), verify=madqci.ca, timeout=10)
    assert_etsi_error(r, 401)


def test_a_twin_signed_certificate_of_an_unknown_sae_is_401(madqci, tmp_path):
    # Same CA, but a name that is no SAE of the topology.
    pki = TwinPKI(Path(madqci.ca).parent)
    stranger = pki.sae_client(f"stranger-{uuid.uuid4().hex[:6]}")
    r = requests.get(enc_url(madqci, MASTER, SLAVE, "status"), verify=madqci.ca, cert=(str(stranger.cert),
                     str(stranger.key)), timeout=10)
    assert_etsi_error(r, 401)


def test_a_certificate_from_another_ca_fails_the_handshake(madqci, tmp_path):
    foreign = TwinPKI(tmp_path / "foreign").sae_client(MASTER)  # right name, wrong CA
    # TLS 1.3 checks the client certificate after the client's handshake ends: an alert or a closed connection.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(enc_url(madqci, MASTER, SLAVE, "status"), verify=madqci.ca,
                     cert=(str(foreign.cert), str(foreign.key)), timeout=10)


def test_the_sae_header_is_ignored_for_an_sae_certificate(madqci):
    with madqci.session("sae-cait-2") as s:
        s.headers["X-SAE-ID"] = MASTER  # try to impersonate
        status = s.get(enc_url(madqci, MASTER, SLAVE, "status")).json()
    assert status["master_SAE_ID"] == "sae-cait-2"


def test_the_portal_certificate_acts_for_the_sae_it_names(madqci):
    with madqci.session(MASTER, portal=True) as s:
        keys = s.post(enc_url(madqci, MASTER, SLAVE), json={"number": 1}).json()["keys"]
    with madqci.session(SLAVE, portal=True) as s:
        got = s.post(enc_url(madqci, SLAVE, MASTER, "dec_keys"), json={"key_IDs": [{"key_ID": keys[0]["key_ID"]}]})
    assert got.json()["keys"][0]["key"] == keys[0]["key"]
    with madqci.session(portal=True) as s:  # the portal without naming an SAE
        assert_etsi_error(s.get(enc_url(madqci, MASTER, SLAVE, "status")), 401)


def test_tls_client_without_sni_or_with_tls12_still_works(madqci):
    # Some KME clients pin TLS 1.2; the server accepts it.
    ctx = ssl.create_default_context(cafile=madqci.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*madqci.sae_cert(MASTER))
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(madqci.url("CAIT"))
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=10)
    conn.request("GET", f"/api/v1/keys/{SLAVE}/status")
    assert conn.getresponse().status == 200
    conn.close()


# -- 503 ---------------------------------------------------------------------------------------------------
def test_not_enough_key_is_503(twin_factory):
    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key(MASTER, "sae-ccs-1")
    twin.admin("cait-ccs", "cut")
    twin.admin("cait-ccs", "drain")
    assert_etsi_error(twin.enc_keys(MASTER, "sae-ccs-1"), 503)
    assert twin.wait_for_key(MASTER, "sae-ccs-1", timeout=0)["stored_key_count"] == 0
    twin.admin("cait-ccs", "restore")
    twin.wait_for_key(MASTER, "sae-ccs-1")
    assert twin.enc_keys(MASTER, "sae-ccs-1").status_code == 200
