"""Key delivery through the portal: ETSI 014 for tenants' SAEs, isolation, metering, errors."""

from __future__ import annotations

import base64

import pytest

from services.models import KeyDelivery
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides


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
    assert wrong.status_code == 400


@pytest.mark.parametrize("body, fragment", [
    ({"size": 100}, "multiple of 8"),
    ({"size": 0}, "between"),
    ({"size": 1 << 20}, "between"),
    ({"number": 0}, "at least 1"),
    ({"number": 10**6}, "max_key_per_request"),
    ({"number": "two"}, "integer"),
    ({"extension_mandatory": [{"abc_route_type": "direct"}]}, "mandatory extension"),
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
    assert response.status_code in (401, 403) and "keys:write" in response.json()["message"]


def test_quota_exhaustion_is_a_clear_etsi_error_and_delivers_nothing(make_lab):
    lab = make_lab("upm")
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 600, "qkd_key_bits.month": -1})
    assert lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 2}).status_code == 200
    response = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 2})
    assert response.status_code == 429
    assert "quota qkd_key_bits.day exceeded" in response.json()["message"]
    assert '"qkd_key_bits.day";r=88' in response["RateLimit"]
    assert used_bits(lab.tenant) == 512
    assert KeyDelivery.objects.for_tenant(lab.tenant).count() == 2


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
