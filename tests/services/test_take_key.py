"""delivery.take_key: the one call by which a portal service (IPsec, TLS) gets a metered QKD key pair for two
of a tenant's SAEs, against the real twin."""

from __future__ import annotations

import uuid

import pytest

from portal.errors import BadRequest, QuotaExceeded
from services import delivery
from services.models import Sae
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides


def sae(lab, name: str) -> Sae:
    return Sae.objects.for_tenant(lab.tenant).select_related("node").get(name=name)


def bits_used(tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == "qkd_key_bits.day")


def test_take_key_gives_both_copies_of_one_relayed_key_metered_once_with_the_order(make_lab):
    lab = make_lab("upm")
    order_id = uuid.uuid4()
    pair = delivery.take_key(lab.tenant, sae(lab, "upm-cait"), sae(lab, "upm-rect"), 256, order_id=order_id,
                             reference="test-order")
    assert pair.key == pair.peer_key and len(pair.key) == 32 and pair.size == 256
    assert pair.hops == 2  # CAIT-CCS-Rectorado: relayed by the trusted node
    assert pair.key.hex() not in repr(pair)  # key material stays out of logs and tracebacks
    charged = UsageRecord.objects.for_tenant(lab.tenant).get(meter="qkd_key_bits")
    assert charged.quantity == 256 and charged.order_id == order_id and bits_used(lab.tenant) == 256
    # The peer copy was taken by the portal: nobody can fetch it again.
    again = lab.client.get(f"/api/qkd/keys/{pair.key_id}")
    assert again.status_code == 400

    other = delivery.take_key(lab.tenant, sae(lab, "upm-cait"), sae(lab, "upm-rect"), 256)
    assert other.key_id != pair.key_id and other.key != pair.key


def test_take_key_refuses_before_any_key_leaves_a_kme(make_lab):
    lab = make_lab("upm")
    intruder = make_lab("eve")
    with pytest.raises(BadRequest, match="belong to the tenant"):
        delivery.take_key(lab.tenant, sae(lab, "upm-cait"), sae(intruder, "eve-rect"), 256)
    with pytest.raises(BadRequest, match="multiple of 8"):
        delivery.take_key(lab.tenant, sae(lab, "upm-cait"), sae(lab, "upm-rect"), 255)
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 128})
    with pytest.raises(QuotaExceeded):
        delivery.take_key(lab.tenant, sae(lab, "upm-cait"), sae(lab, "upm-rect"), 256)
    assert not UsageRecord.objects.for_tenant(lab.tenant).exists() and bits_used(lab.tenant) == 0
