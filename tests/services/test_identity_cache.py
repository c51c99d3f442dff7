"""The key gateway's cache of SAE certificate identities (``services.identities``): served without a query
while its listener is subscribed, dropped by any change that can alter an identity (in this process at once,
in every other one by the announcement on the Redis channel), and the database asked whenever the listener is
not subscribed.
On the suite's real Redis and database; the latency across the two gateway processes of a real stack is
measured by tests/faults/test_gateway_faults.py."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from services import identities, saes
from services.models import Sae
from tenants.models import Tenant
from tenants.services import set_status

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the cache lives on Redis (make test has one)")


def wait_for(condition, bound_s: float = 10.0) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.01)


@pytest.fixture
def lab(transactional_db, make_lab):  # committed: changes are announced after the commit, as in production
    identities.invalidate()
    wait_for(identities.live)  # this process's listener subscribed
    yield make_lab("idc")
    identities.invalidate()


def test_a_cached_identity_costs_no_query_and_each_lookup_gets_its_own_objects(lab, django_assert_num_queries):
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    with django_assert_num_queries(1):
        first = saes.cached_sae_for_certificate_serial(serial)
    with django_assert_num_queries(0):
        second = saes.cached_sae_for_certificate_serial(serial)
    assert first.name == second.name == "idc-cait" and second.tenant.slug == "idc" and second.node.node_id == "CAIT"
    assert first is not second and first.tenant is not second.tenant  # never shared between requests
    assert saes.cached_sae_for_certificate_serial("") is None


def test_reissue_revoke_and_suspension_are_seen_at_the_next_lookup(lab):
    cait = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait")
    rect = Sae.objects.for_tenant(lab.tenant).get(name="idc-rect")
    old_cait, old_rect = cait.cert_serial, rect.cert_serial
    assert saes.cached_sae_for_certificate_serial(old_cait) and saes.cached_sae_for_certificate_serial(old_rect)
    new = saes.reissue_certificate(cait)
    assert saes.cached_sae_for_certificate_serial(old_cait) is None
    assert saes.cached_sae_for_certificate_serial(new.sae.cert_serial).name == "idc-cait"
    set_status(lab.tenant, Tenant.Status.SUSPENDED)
    assert saes.cached_sae_for_certificate_serial(old_rect).tenant.status == Tenant.Status.SUSPENDED
    saes.revoke_certificate(rect)
    assert saes.cached_sae_for_certificate_serial(old_rect) is None


def test_a_change_announced_by_another_process_drops_the_cache(lab, django_assert_num_queries):
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    saes.cached_sae_for_certificate_serial(serial)
    with django_assert_num_queries(0):
        saes.cached_sae_for_certificate_serial(serial)
    before = identities._epoch
    identities._redis().publish(identities.CHANNEL, b"changed")  # as another process's commit announces it
    wait_for(lambda: identities._epoch != before)
    with django_assert_num_queries(1):
        assert saes.cached_sae_for_certificate_serial(serial).name == "idc-cait"


def test_a_row_read_while_a_change_is_announced_is_not_kept(lab, monkeypatch, django_assert_num_queries):
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    real = saes.sae_row_for_certificate_serial

    def read_then_change(serial_hex):
        row = real(serial_hex)
        identities.invalidate()  # an announcement arrives between the query and the store
        return row

    monkeypatch.setattr(saes, "sae_row_for_certificate_serial", read_then_change)
    saes.cached_sae_for_certificate_serial(serial)
    monkeypatch.setattr(saes, "sae_row_for_certificate_serial", real)
    with django_assert_num_queries(1):
        saes.cached_sae_for_certificate_serial(serial)


def test_without_the_setting_every_lookup_asks_the_database(lab, settings, django_assert_num_queries):
    settings.KEY_GATEWAY_IDENTITY_CACHE = False
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    for _ in range(2):
        with django_assert_num_queries(1):
            assert saes.cached_sae_for_certificate_serial(serial).name == "idc-cait"
