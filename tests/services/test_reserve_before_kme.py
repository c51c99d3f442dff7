"""Quota is held before a KME hands out keys: parallel requests at a tenant's limit take from the KME (whose
key other tenants share) no more keys than the quota allows; counted at the KME itself, not only in the
ledger. ETSI 014 and ETSI 004 against the real twin."""

from __future__ import annotations

import re

import pytest

from portal.errors import QuotaExceeded, ServiceUnavailable
from services import delivery, registry
from services.models import Sae
from tenants import quota
from tenants.models import QuotaReservation
from tenants.services import set_quota_overrides
from tests.conftest import uses_postgres
from tests.fixtures import run_in_threads


def kme_keys_handed_out(twin, node: str) -> int:
    """The KME's own count of keys it delivered (its Prometheus counter)."""
    with twin.session("sae-cait-1", portal=True) as s:
        text = s.get(twin.url(node) + "/metrics", timeout=10).text
    match = re.search(rf'qkd_node_keys_delivered_total{{node="{node}"}} (\d+)', text)
    assert match, "the twin exports no qkd_node_keys_delivered_total"
    return int(match.group(1))


def used_bits(tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == "qkd_key_bits.day")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_64_parallel_enc_keys_at_the_limit_take_no_more_keys_from_the_kme(backend_twin, make_lab):
    registry.register_twin(backend_twin.endpoints)
    lab = make_lab("race")
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 20 * 256, "qkd_key_bits.month": -1})
    master = Sae.objects.for_tenant(lab.tenant).select_related("node").get(name="race-cait")
    delivery.enc_keys(master, "race-rect", number=1, size=256)  # warm: counters exist, KME limits cached
    before = kme_keys_handed_out(backend_twin, "CAIT")

    def worker(me: Sae) -> str:
        try:
            delivery.enc_keys(me, "race-rect", number=1, size=256)
            return "ok"
        except QuotaExceeded:
            return "refused"
        except ServiceUnavailable:
            return "kme"

    # Each thread reads its SAE before the barrier: only the key requests race.
    outcomes = run_in_threads(64, worker, timeout=120, prepare=lambda _: Sae.objects.for_tenant(lab.tenant)
                              .select_related("node", "tenant").get(pk=master.pk))
    assert len(outcomes) == 64 and outcomes.count("kme") == 0, outcomes
    assert outcomes.count("ok") == 19 and outcomes.count("refused") == 45
    # The KME handed out exactly the keys that were charged: none taken and thrown away.
    assert kme_keys_handed_out(backend_twin, "CAIT") - before == 19
    assert used_bits(lab.tenant) == 20 * 256 and not QuotaReservation.objects.for_tenant(lab.tenant).exists()


def test_a_kme_failure_gives_the_held_bits_back(make_lab, twin_factory):
    lab = make_lab("upm")
    # A twin of this test's own (the suite's shared one keeps its key): the portal now brokers from it.
    twin = twin_factory("madqci", time_scale=50.0)
    registry.register_twin(twin.endpoints)
    registry.forget_status_cache()
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1")
    master = Sae.objects.for_tenant(lab.tenant).select_related("node").get(name="upm-cait")
    delivery.enc_keys(master, "upm-rect", number=1, size=256)  # the KME's limits are read and cached
    twin.admin("cait-ccs", "cut")
    twin.admin("cait-ccs", "drain")
    with pytest.raises(ServiceUnavailable, match="cannot deliver keys"):  # held, then no key at the KME
        delivery.enc_keys(master, "upm-rect", number=1, size=256)
    assert used_bits(lab.tenant) == 256 and not QuotaReservation.objects.for_tenant(lab.tenant).exists()
