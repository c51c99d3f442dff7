"""Which token scope opens which key endpoint: in-process (Django) and through the HTTPS key gateway.

keys:write takes keys (enc_keys, open_connect, the simple REST key); keys:read reads what was taken for you
(dec_keys, status, the simple REST peer copy). A token with only the other scope is refused in the ETSI error
body (``{"message": ...}``, never the portal's ``{"error": ...}``): 401 on the ETSI 014 paths (the standard lists
no 403), 403 on the 004 views; and nothing is charged or consumed.
"""

from __future__ import annotations

import pytest
import requests

from services import pki
from services.models import KeyStream
from tenants import quota
from tenants.models import UsageRecord


def used(tenant, quota_key: str) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == quota_key)


def charged_nothing(lab) -> None:
    assert used(lab.tenant, "qkd_key_bits.day") == 0 and used(lab.tenant, "key_streams") == 0
    assert not UsageRecord.objects.for_tenant(lab.tenant).exists()
    assert not KeyStream.objects.for_tenant(lab.tenant).exists()


def etsi_forbidden(status: int, body: dict, scope: str, path: str) -> None:
    assert status == (401 if path.startswith("/api/v1/keys/") else 403), body
    assert scope in body["message"] and "error" not in body and "keys" not in body


OPEN = {"source": "sae://m-cait", "destination": "sae://m-rect",
        "QoS": {"Key_chunk_size": 32, "Max_bps": 8192, "Min_bps": 256, "TTL": 60}}


# (name, method, path, data, the scope it needs): every call is made with a token holding only the OTHER scope
MATRIX = [
    ("enc_keys POST", "post", "/api/v1/keys/m-rect/enc_keys", {"number": 1}, "keys:write"),
    ("enc_keys GET", "get", "/api/v1/keys/m-rect/enc_keys?number=1", None, "keys:write"),
    ("open_connect", "post", "/api/etsi004/open_connect", OPEN, "keys:write"),
    ("status", "get", "/api/v1/keys/m-rect/status", None, "keys:read"),
    ("dec_keys POST", "post", "/api/v1/keys/m-cait/dec_keys", "KEY", "keys:read"),
    ("dec_keys GET", "get", "/api/v1/keys/m-cait/dec_keys?key_ID=KEY", None, "keys:read"),
]
CALLER = {"enc_keys POST": "m-cait", "enc_keys GET": "m-cait", "open_connect": "m-cait", "status": "m-cait",
          "dec_keys POST": "m-rect", "dec_keys GET": "m-rect"}


def other_scope(scope: str) -> str:
    return "keys:read" if scope == "keys:write" else "keys:write"


@pytest.fixture
def lab(make_lab):
    return make_lab("m")


def a_key_for_rect(lab) -> str:
    """A key taken by m-cait for m-rect with the lab's full token (256 bits on the ledger)."""
    response = lab.etsi("m-cait", "post", "m-rect/enc_keys", data={"number": 1})
    assert response.status_code == 200, response.content
    return response.json()["keys"][0]["key_ID"]


def ledger(lab) -> list[int]:
    return [r.quantity for r in UsageRecord.objects.for_tenant(lab.tenant)]


@pytest.mark.parametrize("name, method, path, data, scope", MATRIX, ids=[m[0] for m in MATRIX])
def test_in_process_the_wrong_scope_is_refused_in_the_etsi_body_and_costs_nothing(lab, client_for, name, method,
                                                                              path, data, scope):
    key_id = a_key_for_rect(lab) if "KEY" in (path + str(data)) else ""
    baseline = used(lab.tenant, "qkd_key_bits.day"), ledger(lab)
    client = client_for(lab.owner, lab.tenant, [other_scope(scope)])
    body = {"key_IDs": [{"key_ID": key_id}]} if data == "KEY" else data
    response = getattr(client, method)(path.replace("KEY", key_id), body, format="json" if body else None,
                                       HTTP_X_SAE_ID=CALLER[name])
    etsi_forbidden(response.status_code, response.json(), scope, path)
    assert (used(lab.tenant, "qkd_key_bits.day"), ledger(lab)) == baseline
    assert not KeyStream.objects.for_tenant(lab.tenant).exists()
    if key_id:  # the key is still there for a token with the right scope
        again = lab.etsi("m-rect", "post", "m-cait/dec_keys", data={"key_IDs": [{"key_ID": key_id}]})
        assert again.status_code == 200, again.content


def test_the_simple_rest_key_needs_keys_write_and_its_peer_copy_keys_read(lab, client_for):
    reader = client_for(lab.owner, lab.tenant, ["keys:read"])
    response = reader.get("/api/qkd/keys?src=CAIT&dst=Rectorado")
    assert response.status_code == 403 and response.json()["error"]["details"] == {"required_scope": "keys:write"}
    charged_nothing(lab)
    key = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado").json()
    writer = client_for(lab.owner, lab.tenant, ["keys:write"])
    response = writer.get(f"/api/qkd/keys/{key['key_ID']}")
    assert response.status_code == 403 and response.json()["error"]["details"] == {"required_scope": "keys:read"}
    assert reader.get(f"/api/qkd/keys/{key['key_ID']}").json()["key"] == key["key"]  # still there


def test_through_the_https_key_gateway_the_wrong_scope_is_refused_and_costs_nothing(https_portal, lab, client_for):
    """The gateway (another process, PostgreSQL) decides the scope itself for ETSI 014 and forwards 004."""
    key_id = a_key_for_rect(lab)
    ca = str(pki.pki_dir() / "ca.crt")
    for name, method, path, data, scope in MATRIX:
        secret = client_for(lab.owner, lab.tenant, [other_scope(scope)]).token_secret
        body = {"key_IDs": [{"key_ID": key_id}]} if data == "KEY" else data
        response = requests.request(method.upper(), https_portal + path.replace("KEY", key_id), json=body,
                                    headers={"Authorization": f"Bearer {secret}", "X-SAE-ID": CALLER[name]},
                                    verify=ca, timeout=30)
        etsi_forbidden(response.status_code, response.json(), scope, path)
        assert (used(lab.tenant, "qkd_key_bits.day"), ledger(lab)) == (256, [256]), name
        assert not KeyStream.objects.for_tenant(lab.tenant).exists(), name
    # the key was not consumed by the refused dec_keys: the right scope still gets it, through the gateway
    secret = client_for(lab.owner, lab.tenant, ["keys:read"]).token_secret
    response = requests.get(f"{https_portal}/api/v1/keys/m-cait/dec_keys?key_ID={key_id}", verify=ca, timeout=30,
                            headers={"Authorization": f"Bearer {secret}", "X-SAE-ID": "m-rect"})
    assert response.status_code == 200, response.text
