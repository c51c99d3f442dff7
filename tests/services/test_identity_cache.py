"""The key gateway's cache of SAE certificate identities (``services.identities``): served without a query
while the Redis generation stands, dropped by any change that can alter an identity (in this process at once,
in every other one through the generation), and the database asked whenever Redis cannot vouch for the cache.
On the suite's real Redis and database; the latency across the two gateway processes of a real stack is
measured by tests/faults/test_gateway_faults.py."""

from __future__ import annotations

import pytest
from django.conf import settings

from services import identities, saes
from services.models import Sae
from tenants.models import Tenant
from tenants.services import set_status

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the cache lives on Redis (make test has one)")


@pytest.fixture
def lab(transactional_db, make_lab):  # committed: the generation is set after the commit, as in production
    identities.forget()
    yield make_lab("idc")
    identities.forget()


def test_a_cached_identity_costs_no_query_and_each_lookup_gets_its_own_objects(lab, django_assert_num_queries):
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    with django_assert_num_queries(1):
        first = identities.sae_for_certificate_serial(serial)
    with django_assert_num_queries(0):
        second = identities.sae_for_certificate_serial(serial)
    assert first.name == second.name == "idc-cait" and second.tenant.slug == "idc" and second.node.node_id == "CAIT"
    assert first is not second and first.tenant is not second.tenant  # never shared between requests
    assert identities.sae_for_certificate_serial("") is None


def test_reissue_revoke_and_suspension_are_seen_at_the_next_lookup(lab):
    cait = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait")
    rect = Sae.objects.for_tenant(lab.tenant).get(name="idc-rect")
    old_cait, old_rect = cait.cert_serial, rect.cert_serial
    assert identities.sae_for_certificate_serial(old_cait) and identities.sae_for_certificate_serial(old_rect)
    new = saes.reissue_certificate(cait)
    assert identities.sae_for_certificate_serial(old_cait) is None
    assert identities.sae_for_certificate_serial(new.sae.cert_serial).name == "idc-cait"
    set_status(lab.tenant, Tenant.Status.SUSPENDED)
    assert identities.sae_for_certificate_serial(old_rect).tenant.status == Tenant.Status.SUSPENDED
    saes.revoke_certificate(rect)
    assert identities.sae_for_certificate_serial(old_rect) is None


def test_another_process_generation_or_a_lost_one_drops_the_cache(lab, django_assert_num_queries):
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    identities.sae_for_certificate_serial(serial)
    client = identities._redis()
    client.set(identities.GENERATION_KEY, "set-by-another-process")  # a change committed elsewhere
    with django_assert_num_queries(1):
        identities.sae_for_certificate_serial(serial)
    client.delete(identities.GENERATION_KEY)  # Redis restarted without it
    with django_assert_num_queries(1):
        assert identities.sae_for_certificate_serial(serial).name == "idc-cait"
    assert client.get(identities.GENERATION_KEY) not in (None, b"set-by-another-process")
    with django_assert_num_queries(0):
        identities.sae_for_certificate_serial(serial)


def test_without_the_setting_every_lookup_asks_the_database(lab, settings, django_assert_num_queries):
    settings.KEY_GATEWAY_IDENTITY_CACHE = False
    serial = Sae.objects.for_tenant(lab.tenant).get(name="idc-cait").cert_serial
    for _ in range(2):
        with django_assert_num_queries(1):
            assert identities.sae_for_certificate_serial(serial).name == "idc-cait"
