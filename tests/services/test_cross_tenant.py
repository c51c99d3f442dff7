"""Another tenant's SAEs and keys, by every route that names them: not listed, not found, not changed.

An SAE's certificate is its mTLS identity: a tenant that could re-issue another tenant's SAE certificate
would be handed a bundle that authenticates as that SAE. Each test here would pass for the attacker if a
view's queryset were not scoped to the caller's tenant (``SaeViewSet.scope_queryset`` returning every
tenant's SAEs, ``delivery.peer_key`` looking deliveries up unscoped).
"""

from __future__ import annotations

import pytest

from services.models import Sae
from tests.fixtures import same_error


def victim_and_attacker(make_lab):
    return make_lab("victim"), make_lab("attacker")


def certificate_state(sae_id: int) -> tuple:
    sae = Sae.objects.unscoped().get(pk=sae_id)
    return sae.cert_serial, sae.cert_fingerprint, sae.cert_not_after, sae.cert_issued_at


def test_the_sae_list_shows_only_the_callers_saes(make_lab):
    victim, attacker = victim_and_attacker(make_lab)
    listed = attacker.client.get("/api/saes/")
    assert listed.status_code == 200
    body = listed.json()
    rows = body["results"] if isinstance(body, dict) else body
    assert sorted(r["name"] for r in rows) == ["attacker-cait", "attacker-rect"]
    assert sorted(r["name"] for r in (victim.client.get("/api/saes/").json()["results"])) == [
        "victim-cait", "victim-rect"]


@pytest.mark.parametrize("method, suffix", [
    ("get", ""), ("post", "certificate/"), ("post", "revoke/"), ("delete", ""),
])
def test_another_tenants_sae_is_404_by_every_route_and_its_certificate_is_unchanged(make_lab, method, suffix):
    victim, attacker = victim_and_attacker(make_lab)
    target = victim.bundles["victim-cait"]["id"]
    before = certificate_state(target)
    assert before[0]  # it has a current certificate
    response = getattr(attacker.client, method)(f"/api/saes/{target}/{suffix}")
    assert response.status_code == 404, response.content
    assert "BEGIN CERTIFICATE" not in response.content.decode() and "PRIVATE KEY" not in response.content.decode()
    # Unknown and foreign are indistinguishable: the same answer as for an id that does not exist.
    missing = getattr(attacker.client, method)(f"/api/saes/{target + 10_000}/{suffix}")
    assert missing.status_code == 404 and same_error(missing, response)
    assert certificate_state(target) == before
    assert Sae.objects.unscoped().filter(pk=target, tenant=victim.tenant).exists()
    # and the victim's SAE still authenticates as itself with its original certificate serial
    assert victim.client.get(f"/api/saes/{target}/").json()["name"] == "victim-cait"


def test_the_peer_key_of_another_tenants_key_is_not_found_and_stays_with_its_owner(make_lab):
    victim, attacker = victim_and_attacker(make_lab)
    key = victim.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado&size=256")
    assert key.status_code == 200, key.content
    key = key.json()
    stolen = attacker.client.get(f"/api/qkd/keys/{key['key_ID']}")
    unknown = attacker.client.get("/api/qkd/keys/00000000-0000-4000-8000-000000000000")
    assert stolen.status_code == unknown.status_code == 400, stolen.content
    assert same_error(stolen, unknown)  # indistinguishable from an ID that was never issued
    assert key["key"] not in stolen.content.decode()
    peer = victim.client.get(f"/api/qkd/keys/{key['key_ID']}")
    assert peer.status_code == 200 and peer.json()["key"] == key["key"]
