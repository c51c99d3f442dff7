"""Key delivery through the portal: ETSI 014 for tenants' SAEs, isolation, metering, errors."""

from __future__ import annotations

import base64

import pytest

from services.models import KeyDelivery
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides


def delivered_keys(tenant) -> int:
    """Keys on record as delivered to the tenant's SAEs (one row per request and slave)."""
    return sum(KeyDelivery.objects.for_tenant(tenant).values_list("key_count", flat=True))


def used_bits(tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == "qkd_key_bits.day")


def test_enc_keys_then_dec_keys_gives_the_same_key_relayed_through_ccs(make_lab):
    lab = make_lab("upm")
    response = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 2, "size": 256})
    assert response.status_code == 200, response.content
    keys = response.json()["keys"]
    assert len(keys) == 2 and all(len(base64.b64decode(k["key"])) == 32 for k in keys)
    assert keys[0]["key_ID_extension"]["hops"] == 2
    response = lab.etsi("upm-rect", "post", "upm-cait/dec_keys",
                        data={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert response.status_code == 200, response.content
    assert {k["key_ID"]: k["key"] for k in response.json()["keys"]} == {k["key_ID"]: k["key"] for k in keys}
    # metered once, exactly: 2 x 256 bits on enc_keys, nothing for dec_keys
    assert used_bits(lab.tenant) == 512
    assert [r.quantity for r in UsageRecord.objects.for_tenant(lab.tenant)] == [512]
    # a replay fails
    again = lab.etsi("upm-rect", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": keys[0]["key_ID"]}]})
    assert again.status_code == 400 and "message" in again.json() and "error" not in again.json()


def test_get_forms_and_status(make_lab):
    lab = make_lab("upm")
    status = lab.etsi("upm-cait", "get", "upm-rect/status").json()
    assert status["master_SAE_ID"] == "upm-cait" and status["slave_SAE_ID"] == "upm-rect"
    assert status["source_KME_ID"] == "CAIT" and status["target_KME_ID"] == "Rectorado"
    key = lab.etsi("upm-cait", "get", "upm-rect/enc_keys?number=1&size=128").json()["keys"][0]
    assert len(base64.b64decode(key["key"])) == 16
    peer = lab.etsi("upm-rect", "get", f"upm-cait/dec_keys?key_ID={key['key_ID']}").json()["keys"][0]
    assert peer["key"] == key["key"]


def test_another_tenant_cannot_fetch_or_name_the_keys(make_lab):
    a, b = make_lab("alpha"), make_lab("bravo")
    key = a.etsi("alpha-cait", "post", "alpha-rect/enc_keys", data={"number": 1}).json()["keys"][0]
    stolen = b.etsi("bravo-rect", "post", "bravo-cait/dec_keys", data={"key_IDs": [{"key_ID": key["key_ID"]}]})
    random_id = b.etsi("bravo-rect", "post", "bravo-cait/dec_keys",
                       data={"key_IDs": [{"key_ID": "00000000-0000-4000-8000-000000000000"}]})
    assert stolen.status_code == random_id.status_code == 400
    assert stolen.json()["message"] == random_id.json()["message"]  # indistinguishable from unknown
    # b cannot use a's SAE names at all
    assert b.etsi("alpha-rect", "post", "alpha-cait/dec_keys",
                  data={"key_IDs": [{"key_ID": key["key_ID"]}]}).status_code == 400
    assert b.etsi("bravo-cait", "post", "alpha-rect/enc_keys", data={}).status_code == 400
    # the rightful slave still gets it
    assert a.etsi("alpha-rect", "post", "alpha-cait/dec_keys",
                  data={"key_IDs": [{"key_ID": key["key_ID"]}]}).json()["keys"][0]["key"] == key["key"]


def test_only_the_slave_it_was_issued_for_gets_the_key(make_lab):
    lab = make_lab("upm")
    lab.add_sae("upm-cait-2", "CAIT")
    key = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={}).json()["keys"][0]
    wrong = lab.etsi("upm-cait-2", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": key["key_ID"]}]})
    # A caller the key request did not name: the standard's 401 (014 Table 7), and the key stays for its slave.
    assert wrong.status_code == 401 and wrong.json()["message"] == "key not issued for the calling SAE"
    right = lab.etsi("upm-rect", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": key["key_ID"]}]})
    assert right.status_code == 200 and right.json()["keys"][0]["key"] == key["key"]
    again = lab.etsi("upm-rect", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": key["key_ID"]}]})
    assert again.status_code == 400 and again.json()["message"] == "one or more keys specified are not found on KME"


@pytest.mark.parametrize("body, fragment", [
    ({"size": 100}, "size shall be a multiple of 8"),
    ({"size": 0}, "between"),
    ({"size": 1 << 20}, "between"),
    ({"number": 0}, "at least 1"),
    ({"number": 10**6}, "max_key_per_request"),
    ({"number": "two"}, "integer"),
    ({"extension_mandatory": [{"abc_route_type": "direct"}]},
     "not all extension_mandatory parameters are supported[{'extension_mandatory_unsupported': ['abc_route_type']}]"),
    ({"additional_slave_SAE_IDs": "x"}, "additional_slave_SAE_IDs"),
])
def test_etsi_rules_and_errors_consume_nothing(make_lab, body, fragment):
    lab = make_lab("upm")
    response = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data=body)
    assert response.status_code == 400, response.content
    assert fragment in response.json()["message"] + str(response.json().get("details", ""))
    assert used_bits(lab.tenant) == 0


def test_malformed_bodies_and_missing_identity(make_lab):
    lab = make_lab("upm")
    bad_json = lab.client.post("/api/v1/keys/upm-rect/enc_keys", data="{", content_type="application/json",
                               HTTP_X_SAE_ID="upm-cait")
    assert bad_json.status_code == 400 and "message" in bad_json.json()
    assert lab.client.post("/api/v1/keys/upm-rect/enc_keys", {}, format="json").status_code == 400  # no X-SAE-ID
    assert lab.etsi("upm-cait", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": "nope"}]}).status_code == 400
    assert lab.etsi("upm-cait", "post", "upm-cait/dec_keys", data={"key_IDs": []}).status_code == 400
    from rest_framework.test import APIClient

    anonymous = APIClient().post("/api/v1/keys/upm-rect/enc_keys", {}, format="json")
    assert anonymous.status_code == 401 and "message" in anonymous.json()


def test_token_scope_is_enforced(make_lab, client_for):
    lab = make_lab("upm")
    reader = client_for(lab.owner, lab.tenant, ["keys:read"])
    response = reader.post("/api/v1/keys/upm-rect/enc_keys", {}, format="json", HTTP_X_SAE_ID="upm-cait")
    assert response.status_code == 403 and "keys:write" in response.json()["message"]


def test_quota_exhaustion_is_a_clear_etsi_error_and_delivers_nothing(make_lab):
    lab = make_lab("upm")
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 600, "qkd_key_bits.month": -1})
    assert lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 2}).status_code == 200
    response = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 2})
    assert response.status_code == 429
    assert "quota qkd_key_bits.day exceeded" in response.json()["message"]
    assert '"qkd_key_bits.day";r=88' in response["RateLimit"]
    assert used_bits(lab.tenant) == 512
    assert delivered_keys(lab.tenant) == 2


def test_simple_rest_key_and_peer_copy(make_lab):
    lab = make_lab("upm")
    key = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado&size=256")
    assert key.status_code == 200, key.content
    body = key.json()
    assert body["hops"] == 2 and body["src"] == "upm-cait" and body["dst"] == "upm-rect"
    peer = lab.client.get(f"/api/qkd/keys/{body['key_ID']}")
    assert peer.status_code == 200 and peer.json()["key"] == body["key"]
    assert lab.client.get(f"/api/qkd/keys/{body['key_ID']}").status_code == 400  # fetched once
    direct = lab.client.get("/api/qkd/keys?src=CAIT&dst=CCS").json()
    assert direct["hops"] == 1 and direct["dst"] == "node-ccs"  # an SAE created for the node
    assert lab.client.get("/api/qkd/keys?src=CAIT&dst=Atlantis").status_code == 400


def test_sae_certificates_are_issued_once_and_rotated(make_lab):
    lab = make_lab("upm")
    bundle = lab.bundles["upm-cait"]
    assert "BEGIN CERTIFICATE" in bundle["certificate"] and "PRIVATE KEY" in bundle["private_key"]
    listed = lab.client.get(f"/api/saes/{bundle['id']}/").json()
    assert "private_key" not in listed and listed["has_certificate"]
    rotated = lab.client.post(f"/api/saes/{bundle['id']}/certificate/").json()
    assert rotated["cert_fingerprint"] != bundle["cert_fingerprint"]
    revoked = lab.client.post(f"/api/saes/{bundle['id']}/revoke/").json()
    assert revoked["has_certificate"] is False
    assert lab.client.post("/api/saes/", {"name": "upm-cait", "node": "CAIT"}, format="json").status_code == 409


def test_simple_rest_per_hop_gives_one_key_per_link_each_with_its_peer_copy(make_lab):
    lab = make_lab("upm")
    response = lab.client.get("/api/qkd/keys?src=upm-cait&dst=upm-rect&mode=per-hop&size=128")
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["mode"] == "per-hop" and body["path"] == ["CAIT", "CCS", "Rectorado"] and body["hops"] == 2
    hops = body["keys"]
    assert [(h["from"], h["to"]) for h in hops] == [("CAIT", "CCS"), ("CCS", "Rectorado")]
    assert [(h["src"], h["dst"]) for h in hops] == [("upm-cait", "node-ccs"), ("node-ccs", "upm-rect")]
    assert all(h["hops"] == 1 and len(base64.b64decode(h["key"])) == 16 for h in hops)  # link keys, not relayed
    assert hops[0]["key"] != hops[1]["key"]
    # Each hop's far end gets the same key by its ID, once.
    for hop in hops:
        peer = lab.client.get(f"/api/qkd/keys/{hop['key_ID']}").json()
        assert peer["key"] == hop["key"] and peer["dst"] == hop["dst"] and peer["hops"] == 1
    # Metered as one usage: hops x size bits.
    assert used_bits(lab.tenant) == 2 * 128
    assert [r.quantity for r in UsageRecord.objects.for_tenant(lab.tenant)] == [256]
    # end-to-end stays the default; an unknown mode is a clear 400 that costs nothing
    assert lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado").json()["hops"] == 2
    bad = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado&mode=teleport")
    assert bad.status_code == 400 and "per-hop" in bad.json()["error"]["message"]
    same = lab.client.get("/api/qkd/keys?src=upm-cait&dst=CAIT&mode=per-hop")
    assert same.status_code == 400
    assert used_bits(lab.tenant) == 2 * 128 + 256


def test_per_hop_is_all_or_nothing_against_the_quota(make_lab):
    lab = make_lab("upm")
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 300, "qkd_key_bits.month": -1})
    refused = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado&mode=per-hop&size=256")  # needs 512 bits
    assert refused.status_code == 429 and "qkd_key_bits.day" in refused.json()["error"]["message"]
    assert used_bits(lab.tenant) == 0 and delivered_keys(lab.tenant) == 0


def test_delete_sae_refuses_while_deliveries_reference_it(make_lab):
    lab = make_lab("upm")
    lab.add_sae("upm-spare", "CCS")
    key = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={}).json()["keys"][0]
    for name in ("upm-cait", "upm-rect"):
        response = lab.client.delete(f"/api/saes/{lab.bundles[name]['id']}/")
        assert response.status_code == 409, response.content
        assert "revoke its certificate" in response.json()["error"]["message"]
    # nothing was deleted: the key is still on record for its slave
    assert lab.etsi("upm-rect", "post", "upm-cait/dec_keys",
                    data={"key_IDs": [{"key_ID": key["key_ID"]}]}).status_code == 200
    # an SAE nothing refers to is deleted
    assert lab.client.delete(f"/api/saes/{lab.bundles['upm-spare']['id']}/").status_code == 204
    assert lab.client.get(f"/api/saes/{lab.bundles['upm-spare']['id']}/").status_code == 404


def test_key_requests_have_their_own_rate_limit_bucket(make_lab, settings):
    from tenants import ratelimit

    lab = make_lab("upm")
    settings.API_RATE_LIMIT_PER_SECOND, settings.API_RATE_LIMIT_BURST = 0.01, 2
    settings.KEY_DELIVERY_RATE_LIMIT_PER_SECOND, settings.KEY_DELIVERY_RATE_LIMIT_BURST = 0.01, 3
    ratelimit.limiter.cache_clear()
    try:
        # the token's management bucket runs dry ...
        assert [lab.client.get("/api/me/").status_code for _ in range(3)] == [200, 200, 429]
        # ... and key delivery, in its own bucket, still works, with its own policy in the headers
        first = lab.etsi("upm-cait", "get", "upm-rect/status")
        assert first.status_code == 200 and first["RateLimit-Policy"].startswith('"key-requests";q=3')
        assert lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={}).status_code == 200
        assert lab.etsi("upm-cait", "get", "upm-rect/status").status_code == 200
        throttled = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={})
        assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1
        assert "message" in throttled.json()  # the ETSI error format
        assert used_bits(lab.tenant) == 256  # the throttled request took nothing
    finally:
        ratelimit.limiter.cache_clear()


def test_the_default_key_rate_limit_does_not_throttle_a_client_beyond_the_api_burst(make_lab, settings):
    from tenants import ratelimit

    lab = make_lab("upm")
    ratelimit.limiter.cache_clear()
    try:
        rate, burst, _ = ratelimit.scope_limits("keys")
        # A 004 stream at its default QoS (40 kbit/s in 32-byte chunks) is ~157 get_key calls a second per SAE.
        assert rate >= 2 * 40000 / 256 and burst >= rate
        # More key requests back to back than the management API's whole burst: none is throttled.
        unknown = {"key_IDs": [{"key_ID": "00000000-0000-4000-8000-000000000000"}]}
        codes = {lab.etsi("upm-rect", "post", "upm-cait/dec_keys", data=unknown).status_code
                 for _ in range(settings.API_RATE_LIMIT_BURST + 20)}
        assert codes == {400}
    finally:
        ratelimit.limiter.cache_clear()


def test_keys_a_kme_delivers_twice_are_refused_and_charged_once_even_with_the_quota_used_up(make_lab):
    import uuid

    from portal.errors import QuotaExceeded, ServiceUnavailable
    from services import delivery
    from services.models import Sae
    from services.sdqkd.client import DeliveredKey

    lab = make_lab("upm")
    # The day window is counted first and unlimited here; the month window refuses: the refusal must take the
    # day window's addition back too.
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": -1, "qkd_key_bits.month": 512})
    master, slave = (Sae.objects.for_tenant(lab.tenant).get(name=n) for n in ("upm-cait", "upm-rect"))
    keys = [DeliveredKey(str(uuid.uuid4()), "") for _ in range(2)]
    def record(batch):
        delivery.record_deliveries(lab.tenant, [delivery.Delivery(master, [slave], batch)], 256, "test")

    record(keys)
    with pytest.raises(ServiceUnavailable, match="delivered before"):  # a faulty KME repeats key IDs
        record(list(reversed(keys)))
    with pytest.raises(QuotaExceeded, match=r"qkd_key_bits\.month"):
        record([DeliveredKey(str(uuid.uuid4()), "")])
    states = {s.quota_key: s.used for s in quota.quota_states(lab.tenant)}
    assert states["qkd_key_bits.day"] == states["qkd_key_bits.month"] == 512
    assert [r.quantity for r in UsageRecord.objects.for_tenant(lab.tenant)] == [512]
    assert delivered_keys(lab.tenant) == 2


def test_multicast_to_two_saes_of_one_node_and_the_master_cannot_be_its_own_slave(make_lab):
    lab = make_lab("upm")
    lab.add_sae("upm-rect-2", "Rectorado")
    response = lab.etsi("upm-cait", "post", "upm-rect/enc_keys",
                        data={"number": 2, "size": 256, "additional_slave_SAE_IDs": ["upm-rect-2"]})
    assert response.status_code == 200, response.content
    keys = response.json()["keys"]
    ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}
    for slave in ("upm-rect", "upm-rect-2"):  # two tenant SAEs at Rectorado: both get the keys, once each
        fetched = lab.etsi(slave, "post", "upm-cait/dec_keys", data=ids)
        assert fetched.status_code == 200, fetched.content
        assert [k["key"] for k in fetched.json()["keys"]] == [k["key"] for k in keys]
        assert lab.etsi(slave, "post", "upm-cait/dec_keys", data=ids).status_code == 400
    assert used_bits(lab.tenant) == 512  # a multicast key is charged once, not per slave

    for bad in (["upm-rect"], ["upm-cait"], ["upm-rect-2", "upm-rect-2"]):
        refused = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"additional_slave_SAE_IDs": bad})
        assert refused.status_code == 400, (bad, refused.content)
    for path in ("upm-cait/enc_keys", "upm-cait/status"):
        itself = lab.etsi("upm-cait", "get", path)
        assert itself.status_code == 400 and "must differ" in itself.json()["message"]
    assert used_bits(lab.tenant) == 512


@pytest.mark.parametrize("body", [
    {"number": None, "size": None, "additional_slave_SAE_IDs": None, "extension_mandatory": None,
     "extension_optional": None},
    {"additional_slave_SAE_IDs": [], "extension_mandatory": [], "extension_optional": []},
    {"extension_mandatory": [{}], "extension_optional": [{}]},
], ids=["null is absent", "empty lists are none", "empty objects are no extension"])
def test_optional_key_request_fields_may_be_null_or_empty(make_lab, body):
    lab = make_lab("upm")
    response = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data=body)
    assert response.status_code == 200, response.content
    assert len(response.json()["keys"]) == 1 and used_bits(lab.tenant) == 256  # the defaults: 1 key of key_size


def test_status_advertises_the_multicast_the_portal_can_serve(make_lab):
    lab = make_lab("upm")
    status = lab.etsi("upm-cait", "get", "upm-rect/status").json()
    assert status["max_SAE_ID_count"] == 0  # no other SAE of the tenant to name
    for name, node in (("upm-rect-2", "Rectorado"), ("upm-rect-3", "Rectorado"), ("upm-ccs", "CCS")):
        lab.add_sae(name, node)
    # The twin has two portal SAE identities per node: the slave takes one at Rectorado, one is left there.
    assert lab.etsi("upm-cait", "get", "upm-rect/status").json()["max_SAE_ID_count"] == 2
    served = lab.etsi("upm-cait", "post", "upm-rect/enc_keys",
                      data={"additional_slave_SAE_IDs": ["upm-rect-2", "upm-ccs"]})
    assert served.status_code == 200, served.content
    refused = lab.etsi("upm-cait", "post", "upm-rect/enc_keys",
                       data={"additional_slave_SAE_IDs": ["upm-rect-2", "upm-rect-3"]})
    assert refused.status_code == 400
