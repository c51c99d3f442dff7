"""The quota service: atomic check-and-record, idempotency, release, overrides, concurrency."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from portal.errors import BadRequest, Conflict, Forbidden, QuotaExceeded
from tenants import quota
from tenants.models import QuotaCounter, Tenant, UsageRecord
from tenants.services import set_quota_overrides
from tests.conftest import uses_postgres
from tests.fixtures import run_in_threads


def used(tenant, key: str) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == key)


def ledger_sum(tenant, meter: str) -> int:
    return sum(r.quantity for r in UsageRecord.objects.for_tenant(tenant).filter(meter=meter))


def test_consume_records_ledger_and_counts_every_window(make_tenant):
    t = make_tenant("t1")
    record = quota.consume(t, "qkd_key_bits", 256, "req-1", reference="key:abc")
    assert (record.quantity, record.unit, record.meter, record.reference) == (256, "bit", "qkd_key_bits", "key:abc")
    assert used(t, "qkd_key_bits.day") == 256
    assert used(t, "qkd_key_bits.month") == 256
    assert ledger_sum(t, "qkd_key_bits") == 256


def test_over_quota_consumes_nothing_and_says_why(make_tenant):
    t = make_tenant("t1")
    quota.consume(t, "qkd_key_bits", 9_000, "a")
    with pytest.raises(QuotaExceeded) as err:
        quota.consume(t, "qkd_key_bits", 1_001, "b")
    assert "qkd_key_bits.day" in err.value.message and "9000 of 10000" in err.value.message
    assert 'r=1000' in err.value.headers["RateLimit"]
    assert err.value.headers["RateLimit-Policy"].startswith('"qkd_key_bits.day";q=10000')
    assert used(t, "qkd_key_bits.day") == 9_000 and used(t, "qkd_key_bits.month") == 9_000
    assert UsageRecord.objects.for_tenant(t).count() == 1
    quota.consume(t, "qkd_key_bits", 1_000, "c")  # exactly up to the limit is fine
    assert used(t, "qkd_key_bits.day") == 10_000


def test_month_window_also_limits(make_tenant):
    t = make_tenant("t1")
    set_quota_overrides(t, {"qkd_key_bits.day": -1, "qkd_key_bits.month": 500})
    quota.consume(t, "qkd_key_bits", 400, "a")
    with pytest.raises(QuotaExceeded, match=r"qkd_key_bits\.month"):
        quota.consume(t, "qkd_key_bits", 101, "b")
    assert used(t, "qkd_key_bits.day") == 400  # the day counter was rolled back with the month decision


def test_same_idempotency_key_records_once(make_tenant):
    t = make_tenant("t1")
    first = quota.consume(t, "entropy_bytes", 100, "same")
    again = quota.consume(t, "entropy_bytes", 100, "same")
    assert first.pk == again.pk
    assert used(t, "entropy_bytes.day") == 100
    with pytest.raises(Conflict):
        quota.consume(t, "entropy_bytes", 999, "same")


def test_idempotency_keys_are_per_tenant(make_tenant):
    a, b = make_tenant("a"), make_tenant("b")
    quota.consume(a, "entropy_bytes", 10, "k")
    quota.consume(b, "entropy_bytes", 10, "k")
    assert used(a, "entropy_bytes.day") == used(b, "entropy_bytes.day") == 10


def test_release_gives_back_with_a_negative_ledger_row(make_tenant):
    t = make_tenant("t1")
    quota.consume(t, "ipsec_tunnels", 1, "open-1")
    quota.consume(t, "ipsec_tunnels", 1, "open-2")
    with pytest.raises(QuotaExceeded):
        quota.consume(t, "ipsec_tunnels", 1, "open-3")
    quota.release(t, "ipsec_tunnels", 1, "close-1")
    quota.release(t, "ipsec_tunnels", 1, "close-1")  # idempotent
    assert used(t, "ipsec_tunnels") == 1
    quota.consume(t, "ipsec_tunnels", 1, "open-3")
    assert ledger_sum(t, "ipsec_tunnels") == used(t, "ipsec_tunnels") == 2
    with pytest.raises(Conflict):
        quota.release(t, "ipsec_tunnels", 5, "close-too-much")


def test_release_targets_the_window_of_the_original_consumption(make_tenant):
    t = make_tenant("t1")
    yesterday = timezone.now() - timedelta(days=1)
    start = yesterday.replace(hour=0, minute=0, second=0, microsecond=0)
    QuotaCounter.objects.create(tenant=t, quota_key="qkd_key_bits.day", window_start=start, used=300)
    month_start = yesterday.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    QuotaCounter.objects.for_tenant(t).get_or_create(
        tenant=t, quota_key="qkd_key_bits.month", window_start=month_start, defaults={"used": 300})
    quota.release(t, "qkd_key_bits", 100, "undo", consumed_at=yesterday)
    assert QuotaCounter.objects.for_tenant(t).get(quota_key="qkd_key_bits.day", window_start=start).used == 200


def test_unlimited_and_not_included(make_tenant):
    t = make_tenant("t1")
    quota.consume(t, "entropy_bytes", 900_000, "a")  # month is -1 (unlimited), day 1e6
    set_quota_overrides(t, {"tls_sessions": 0})
    with pytest.raises(QuotaExceeded):
        quota.consume(t, "tls_sessions", 1, "x")
    set_quota_overrides(t, {"entropy_bytes.day": -1})
    quota.consume(t, "entropy_bytes", 5_000_000, "b")
    state = next(s for s in quota.quota_states(t) if s.quota_key == "entropy_bytes.day")
    assert state.unlimited and state.remaining is None


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
def test_bad_amounts_are_rejected(make_tenant, amount):
    t = make_tenant("t1")
    with pytest.raises(BadRequest):
        quota.consume(t, "entropy_bytes", amount, "k")
    assert UsageRecord.objects.for_tenant(t).count() == 0


def test_unknown_meter_and_missing_key(make_tenant):
    t = make_tenant("t1")
    with pytest.raises(BadRequest, match="unknown meter"):
        quota.consume(t, "coffee", 1, "k")
    with pytest.raises(BadRequest, match="idempotency key"):
        quota.consume(t, "entropy_bytes", 1, "")


def test_suspended_tenant_consumes_nothing(make_tenant):
    t = make_tenant("t1", status=Tenant.Status.SUSPENDED)
    with pytest.raises(Forbidden, match="suspended"):
        quota.consume(t, "entropy_bytes", 1, "k")


def test_ledger_is_append_only(make_tenant):
    t = make_tenant("t1")
    record = quota.consume(t, "entropy_bytes", 1, "k")
    record.quantity = 0
    with pytest.raises(Exception, match="append-only"):
        record.save()
    with pytest.raises(Exception, match="append-only"):
        record.delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
@pytest.mark.parametrize("pipelined", [False, True], ids=["general", "pipelined"])
def test_64_concurrent_consumers_never_overshoot(plan, pipelined):
    """64 threads, each with its own database connection, race for a quota that fits 40 of them (with the
    limits read beforehand, as key delivery does, consume takes its two-round-trip path on PostgreSQL)."""
    tenant = Tenant.objects.create(name="Race", slug="race", plan=plan)
    set_quota_overrides(tenant, {"qkd_key_bits.day": 40 * 256, "qkd_key_bits.month": -1})
    quota.consume(tenant, "qkd_key_bits", 256, "warm-up")  # the windows' counter rows exist: the common case
    limits = quota.check(tenant, "qkd_key_bits", 256) if pipelined else None

    def worker(i: int) -> str:
        try:
            quota.consume(tenant, "qkd_key_bits", 256, f"req-{i}", limits=limits)
            return "ok"
        except QuotaExceeded:
            return "exceeded"

    outcomes = run_in_threads(64, worker)
    assert len(outcomes) == 64
    assert outcomes.count("ok") == 39
    assert used(tenant, "qkd_key_bits.day") == 40 * 256 == ledger_sum(tenant, "qkd_key_bits")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the pipelined path is PostgreSQL's")
def test_the_pipelined_path_decides_exactly_like_the_general_one(plan, monkeypatch):
    """With limits given (outside a transaction) consume sends everything in one round trip; whenever that is
    not the common case (first use of a window, over a limit, a replay) it changes nothing and the general
    path decides. ``then``'s rows commit or roll back with it."""
    taken = []
    pipelined = quota._consume_pipelined
    monkeypatch.setattr(quota, "_consume_pipelined", lambda *a, **k: taken.append(r := pipelined(*a, **k)) or r)
    tenant = Tenant.objects.create(name="Pipe", slug="pipe", plan=plan)
    set_quota_overrides(tenant, {"qkd_key_bits.day": 1000, "qkd_key_bits.month": -1})
    marks = []

    def then(record):
        with connection.cursor() as cursor:  # a statement of the caller's, in the same transaction
            cursor.execute("UPDATE tenants_tenant SET name = %s WHERE id = %s", [f"Pipe {len(marks)}", tenant.pk])
        marks.append(record.idempotency_key)

    def consume(amount, key):
        return quota.consume(tenant, "qkd_key_bits", amount, key, limits=quota.check(tenant, "qkd_key_bits", 1),
                             then=then)

    consume(400, "first")  # no counter rows yet: the general path creates them
    assert taken == [None] and used(tenant, "qkd_key_bits.day") == 400
    record = consume(500, "second")
    assert taken[-1] is record and record.pk and not record.replayed
    assert used(tenant, "qkd_key_bits.day") == 900 == ledger_sum(tenant, "qkd_key_bits")
    committed = f"Pipe {len(marks) - 1}"
    assert Tenant.objects.get(pk=tenant.pk).name == committed  # then's statement committed with it
    with pytest.raises(QuotaExceeded, match="900 of 1000"):
        consume(101, "third")
    assert taken[-1] is None and used(tenant, "qkd_key_bits.day") == 900 == ledger_sum(tenant, "qkd_key_bits")
    assert Tenant.objects.get(pk=tenant.pk).name == committed  # the refused request's statement rolled back
    again = consume(500, "second")  # a replay: recorded once, charged once
    assert again.replayed and again.pk == record.pk and taken[-1] is None
    assert used(tenant, "qkd_key_bits.day") == 900 == ledger_sum(tenant, "qkd_key_bits")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_concurrent_replays_of_one_idempotency_key_record_once(plan):
    tenant = Tenant.objects.create(name="Replay", slug="replay", plan=plan)
    ids = run_in_threads(16, lambda _: quota.consume(tenant, "entropy_bytes", 64, "one-delivery").pk)
    assert len(ids) == 16 and len(set(ids)) == 1
    assert used(tenant, "entropy_bytes.day") == 64 == ledger_sum(tenant, "entropy_bytes")
