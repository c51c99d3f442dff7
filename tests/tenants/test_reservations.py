"""Reserve, then settle: quota held before a backend hands anything out, turned into a ledger row after, given
back on failure or when its process died; counters == ledger + open reservations at every step."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.errors import QuotaExceeded
from tenants import quota
from tenants.models import QuotaReservation, Tenant
from tenants.services import set_quota_overrides
from tests.conftest import uses_postgres
from tests.fixtures import run_in_threads

METER = "qkd_key_bits"


def used(tenant: Tenant, key: str = "qkd_key_bits.day") -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == key)


def ledger(tenant: Tenant) -> int:
    from django.db.models import Sum

    from tenants.models import UsageRecord
    return UsageRecord.objects.for_tenant(tenant).filter(meter=METER).aggregate(s=Sum("quantity"))["s"] or 0


def held(tenant: Tenant) -> int:
    return sum(r.amount for r in QuotaReservation.objects.for_tenant(tenant))


@pytest.fixture
def tenant(make_tenant) -> Tenant:
    tenant = make_tenant("holder")
    set_quota_overrides(tenant, {"qkd_key_bits.day": 1000, "qkd_key_bits.month": -1})
    return tenant


def test_a_reservation_counts_at_once_and_settles_into_one_ledger_row(tenant):
    r = quota.reserve(tenant, METER, 600)
    assert used(tenant) == 600 and held(tenant) == 600 and ledger(tenant) == 0
    with pytest.raises(QuotaExceeded) as refused:  # the held bits are not available to another request
        quota.reserve(tenant, METER, 500)
    assert refused.value.headers["X-RateLimit-Remaining"] == "400"
    record = quota.settle(r, 600, "req-1", "test")
    assert not record.replayed and used(tenant) == 600 == ledger(tenant) and held(tenant) == 0
    assert quota.release_reservation(r) is False and used(tenant) == 600  # settled: nothing to give back


def test_settling_less_gives_the_rest_back_and_more_adds_within_the_limit(tenant):
    r = quota.reserve(tenant, METER, 400)
    quota.settle(r, 256, "less", "test")
    assert used(tenant) == 256 == ledger(tenant) and held(tenant) == 0
    r = quota.reserve(tenant, METER, 100)
    quota.settle(r, 300, "more", "test")  # a draw whose cost was known only after it
    assert used(tenant) == 556 == ledger(tenant)
    r = quota.reserve(tenant, METER, 100)
    with pytest.raises(QuotaExceeded):
        quota.settle(r, 900, "too-much", "test")
    assert used(tenant) == 556 == ledger(tenant) and held(tenant) == 0  # refused: nothing recorded, hold gone


def test_release_gives_everything_back_once(tenant):
    r = quota.reserve(tenant, METER, 700)
    assert quota.release_reservation(r) is True and quota.release_reservation(r) is False
    assert used(tenant) == 0 == ledger(tenant) and held(tenant) == 0


def test_a_replayed_settlement_gives_the_hold_back(tenant):
    first = quota.settle(quota.reserve(tenant, METER, 256), 256, "same-key", "test")
    again = quota.settle(quota.reserve(tenant, METER, 256), 256, "same-key", "test")
    assert again.replayed and again.pk == first.pk
    assert used(tenant) == 256 == ledger(tenant) and held(tenant) == 0


def test_a_dead_requests_hold_expires_and_a_late_settlement_is_consumed_anew(tenant):
    r = quota.reserve(tenant, METER, 800)
    QuotaReservation.objects.for_tenant(tenant).filter(pk=r.pk).update(
        created_at=timezone.now() - timedelta(seconds=quota.RESERVATION_TTL_S + 1))
    assert quota.expire_reservations() == 1 and quota.expire_reservations() == 0
    assert used(tenant) == 0 and held(tenant) == 0
    quota.settle(r, 800, "late", "test")  # the process was only slow: it is charged, within the limit
    assert used(tenant) == 800 == ledger(tenant)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_64_parallel_reservations_at_the_limit_hold_no_more_than_it(make_tenant):
    tenant = make_tenant("race")
    set_quota_overrides(tenant, {"qkd_key_bits.day": 40 * 256, "qkd_key_bits.month": -1})
    quota.consume(tenant, METER, 256, "warm-up")  # the window's counter row exists: the pipelined path

    def worker(i: int) -> str:
        try:
            quota.settle(quota.reserve(tenant, METER, 256), 256, f"req-{i}", "race")
            return "ok"
        except QuotaExceeded:
            return "refused"

    outcomes = run_in_threads(64, worker)
    assert len(outcomes) == 64 and outcomes.count("ok") == 39
    assert used(tenant) == 40 * 256 == ledger(tenant) and held(tenant) == 0
