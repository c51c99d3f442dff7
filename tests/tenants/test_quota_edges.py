"""The quota service at its edges: boundaries (exactly the limit, exactly 200 characters), the RateLimit headers'
exact shape, which window a refusal names, a limit lowered under a hold, duration rows, the reservation's
lifetime, and reserve/settle outside a transaction (one round trip on PostgreSQL). Written from the survivors of
`make mutate MODULE=tenants/quota.py` (docs/testing.md)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from portal.errors import BadRequest, Conflict, QuotaExceeded
from tenants import quota
from tenants.meters import Window, window_bounds
from tenants.models import QuotaCounter, QuotaReservation, Tenant, UsageRecord
from tenants.services import set_plan_limits, set_quota_overrides
from tests.conftest import uses_postgres
from tests.fixtures import run_in_threads

METER = "qkd_key_bits"


def state(tenant: Tenant, key: str) -> quota.QuotaState:
    return next(s for s in quota.quota_states(tenant) if s.quota_key == key)


def ledger(tenant: Tenant, meter: str = METER) -> int:
    return UsageRecord.objects.for_tenant(tenant).filter(meter=meter).aggregate(s=Sum("quantity"))["s"] or 0


def held(tenant: Tenant) -> int:
    return sum(r.amount for r in QuotaReservation.objects.for_tenant(tenant))


def earlier_this_month(tenant: Tenant, used: int) -> None:
    """``used`` bits counted in this month's window on earlier days (today's window stays empty)."""
    start = window_bounds(Window.MONTH, timezone.now())[0]
    QuotaCounter.objects.create(tenant=tenant, quota_key=f"{METER}.month", window_start=start, used=used)


@pytest.fixture
def tenant(make_tenant) -> Tenant:
    return make_tenant("edges")


# --- states and headers --------------------------------------------------------------------------------------
def test_remaining_is_zero_not_negative_when_a_lowered_limit_is_below_the_use(tenant):
    quota.consume(tenant, METER, 500, "before-the-cut")
    set_quota_overrides(tenant, {"qkd_key_bits.day": 100})
    day = state(tenant, "qkd_key_bits.day")
    assert (day.used, day.limit, day.remaining, day.unlimited) == (500, 100, 0, False)
    with pytest.raises(QuotaExceeded) as refused:
        quota.consume(tenant, METER, 1, "after-the-cut")
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    assert '"qkd_key_bits.day";r=0;' in refused.value.headers["RateLimit"]


def test_seconds_to_reset_counts_up_to_the_window_end_and_is_zero_after_it(tenant):
    day = state(tenant, "qkd_key_bits.day")
    assert day.seconds_to_reset(day.reset_at - timedelta(seconds=90)) == 90
    assert day.seconds_to_reset(day.reset_at - timedelta(seconds=89.2)) == 90  # whole seconds, rounded up
    assert day.seconds_to_reset(day.reset_at) == 0
    assert day.seconds_to_reset(day.reset_at + timedelta(seconds=5)) == 0  # a window already over: not negative
    assert state(tenant, "ipsec_tunnels").seconds_to_reset() is None  # a concurrent quota never resets


def test_ratelimit_headers_have_a_window_for_timed_quotas_and_none_for_concurrent_ones(tenant):
    now = timezone.now()
    day_end = window_bounds(Window.DAY, now)[1]
    headers = quota.ratelimit_headers(quota.quota_states(tenant, now, meters=[METER]), now)
    w_day = state(tenant, "qkd_key_bits.day").seconds_to_reset(now)
    w_month = state(tenant, "qkd_key_bits.month").seconds_to_reset(now)
    assert w_day > 0 and w_month >= w_day
    assert headers["RateLimit-Policy"] == (f'"qkd_key_bits.day";q=10000;w={w_day}, '
                                           f'"qkd_key_bits.month";q=100000;w={w_month}')
    assert headers["RateLimit"] == f'"qkd_key_bits.day";r=10000;t={w_day}, "qkd_key_bits.month";r=100000;t={w_month}'
    assert headers["X-RateLimit-Reset"] == str(int(day_end.timestamp()))

    concurrent = quota.ratelimit_headers(quota.quota_states(tenant, now, meters=["ipsec_tunnels"]), now)
    assert concurrent == {"RateLimit-Policy": '"ipsec_tunnels";q=2', "RateLimit": '"ipsec_tunnels";r=2',
                          "X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "2"}


def test_the_x_ratelimit_headers_name_the_tightest_quota_not_the_first(tenant):
    set_quota_overrides(tenant, {"qkd_key_bits.day": 10_000, "qkd_key_bits.month": 500})
    quota.consume(tenant, METER, 400, "a")
    headers = quota.ratelimit_headers(quota.quota_states(tenant, meters=[METER]))
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("500", "100")


def test_a_quota_key_the_plan_does_not_list_is_not_included(make_tenant):
    plan_without_month = type(make_tenant("x").plan).objects.create(name="Day only", slug="day-only")
    set_plan_limits(plan_without_month, {"qkd_key_bits.day": 1000})
    t = make_tenant("day-only", plan=plan_without_month)
    with pytest.raises(QuotaExceeded, match=r"qkd_key_bits\.month exceeded: 0 of 0"):
        quota.check(t, METER, 1)  # meter_states: the month key is absent from plan and overrides -> 0
    with pytest.raises(QuotaExceeded, match=r"qkd_key_bits\.month"):
        quota.reserve(t, METER, 1)


# --- check and the boundaries ----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_limits", [False, True], ids=["one-query", "limits-given"])
def test_check_admits_exactly_the_remaining_amount_and_refuses_one_more(tenant, with_limits):
    limits = quota.effective_limits(tenant) if with_limits else None
    quota.consume(tenant, METER, 9_000, "a")
    assert quota.check(tenant, METER, 1_000, limits=limits) == {"qkd_key_bits.day": 10_000,
                                                               "qkd_key_bits.month": 100_000}
    with pytest.raises(QuotaExceeded, match="9000 of 10000 bits used, 1001 requested"):
        quota.check(tenant, METER, 1_001, limits=limits)
    assert state(tenant, "qkd_key_bits.day").used == 9_000  # check records nothing


def test_reserve_admits_exactly_the_remaining_amount(tenant):
    set_quota_overrides(tenant, {"qkd_key_bits.day": 200, "qkd_key_bits.month": -1})
    r = quota.reserve(tenant, METER, 200)
    assert state(tenant, "qkd_key_bits.day").used == 200 == held(tenant)
    with pytest.raises(QuotaExceeded):
        quota.reserve(tenant, METER, 1)
    quota.settle(r, 200, "all-of-it")
    assert ledger(tenant) == 200


def test_idempotency_keys_of_200_characters_are_accepted_and_201_refused(tenant):
    first = quota.consume(tenant, "entropy_bytes", 1, "k" * 200)
    assert first.idempotency_key == "k" * 200 and first.replayed is False  # a new row, not a replay
    with pytest.raises(BadRequest, match="1 to 200 characters"):
        quota.consume(tenant, "entropy_bytes", 1, "k" * 201)
    with pytest.raises(BadRequest, match="1 to 200 characters"):
        quota.settle(quota.reserve(tenant, METER, 1), 1, "k" * 201)
    assert ledger(tenant, "entropy_bytes") == 1


def test_references_are_cut_to_200_characters(tenant):
    long = "r" * 150 + "s" * 150
    assert quota.consume(tenant, METER, 1, "c", reference=long).reference == long[:200]
    assert quota.release(tenant, METER, 1, "u", reference=long).reference == long[:200]
    assert quota.settle(quota.reserve(tenant, METER, 1), 1, "s", reference=long).reference == long[:200]
    assert quota.record_duration(tenant, "key_stream_seconds", 5, "d", at=timezone.now(), order_id=uuid.uuid4(),
                                 reference=long)
    stored = {r.idempotency_key: r.reference for r in UsageRecord.objects.for_tenant(tenant)}
    assert stored == {"c": long[:200], "u": long[:200], "s": long[:200], "d": long[:200]}


# --- replays -------------------------------------------------------------------------------------------------
def test_an_idempotency_key_reused_for_another_meter_or_amount_is_a_conflict(tenant):
    quota.consume(tenant, "entropy_bytes", 100, "k1")
    with pytest.raises(Conflict):
        quota.consume(tenant, METER, 100, "k1")  # a meter named after the first ("q" > "e")
    quota.consume(tenant, METER, 100, "k2")
    with pytest.raises(Conflict):
        quota.consume(tenant, "entropy_bytes", 100, "k2")  # and one named before it
    with pytest.raises(Conflict):
        quota.consume(tenant, METER, 50, "k2")  # less than the first time
    with pytest.raises(Conflict):
        quota.consume(tenant, METER, 101, "k2")  # more
    quota.release(tenant, METER, 10, "r1")
    with pytest.raises(Conflict):
        quota.release(tenant, METER, 5, "r1")
    with pytest.raises(Conflict):
        quota.release(tenant, METER, 100, "k2")  # a consumption's key is not a release's, even for the same amount
    assert ledger(tenant, "entropy_bytes") == 100 and ledger(tenant) == 90


# --- which window a refusal names ------------------------------------------------------------------------------
def test_a_refusal_by_the_month_reports_the_months_use_not_the_days(tenant):
    set_quota_overrides(tenant, {"qkd_key_bits.day": 10_000, "qkd_key_bits.month": 500})
    earlier_this_month(tenant, 450)
    with pytest.raises(QuotaExceeded) as refused:
        quota.consume(tenant, METER, 100, "c")
    assert refused.value.details == {"quota": "qkd_key_bits.month", "limit": 500, "used": 450, "requested": 100}
    with pytest.raises(QuotaExceeded) as refused:
        quota.settle(quota.reserve(tenant, METER, 10), 100, "s")  # settling more than held, over the month
    assert refused.value.details == {"quota": "qkd_key_bits.month", "limit": 500, "used": 450, "requested": 100}
    assert held(tenant) == 0 and ledger(tenant) == 0


def test_a_refusal_by_the_day_reports_the_days_use_not_the_months(tenant):
    set_quota_overrides(tenant, {"qkd_key_bits.day": 1000, "qkd_key_bits.month": 5000})
    earlier_this_month(tenant, 2000)
    quota.consume(tenant, METER, 900, "today")
    details = {"quota": "qkd_key_bits.day", "limit": 1000, "used": 900, "requested": 200}
    with pytest.raises(QuotaExceeded) as refused:
        quota.consume(tenant, METER, 200, "c")
    assert refused.value.details == details
    # reserve's general path: the pre-check passes on a stale view only in a race, so go around it.
    states = quota.meter_states(tenant, METER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quota, "meter_states", lambda *a, **k: [dataclasses.replace(s, used=0) for s in states])
        with pytest.raises(QuotaExceeded) as refused:
            quota.reserve(tenant, METER, 200)
    assert refused.value.details == details and held(tenant) == 0


# --- settle under a lowered limit -------------------------------------------------------------------------------
def test_a_hold_settles_in_full_even_when_the_limit_was_lowered_under_it(tenant):
    """The bits were held (and handed out) under the old limit: settling exactly them must not be refused."""
    r = quota.reserve(tenant, METER, 600)
    set_quota_overrides(tenant, {"qkd_key_bits.day": 500})
    record = quota.settle(r, int("600"), "held-before-the-cut")  # int(): not the same object as the 600 held
    assert record.quantity == 600 and ledger(tenant) == 600 == state(tenant, "qkd_key_bits.day").used


def test_a_reservation_and_a_quota_state_cannot_be_changed_after_the_fact(tenant):
    r = quota.reserve(tenant, METER, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.amount = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state(tenant, "qkd_key_bits.day").used = 0  # type: ignore[misc]
    quota.release_reservation(r)


def test_a_hold_younger_than_the_ttl_is_kept(tenant):
    """Only a reservation older than five minutes is presumed dead; one a second younger is kept (a request may
    take up to five minutes between reserve and settle)."""
    r = quota.reserve(tenant, METER, 100)
    QuotaReservation.objects.for_tenant(tenant).filter(pk=r.pk).update(
        created_at=timezone.now() - timedelta(seconds=299))
    assert quota.expire_reservations() == 0 and held(tenant) == 100
    assert quota.release_reservation(r) is True


# --- duration rows ----------------------------------------------------------------------------------------------
def test_record_duration_writes_one_row_at_the_span_start_and_refuses_other_meters(tenant):
    at, order = timezone.now() - timedelta(hours=2), uuid.uuid4()
    assert quota.record_duration(tenant, "key_stream_seconds", 3600, "h1", at=at, order_id=order) is True
    assert quota.record_duration(tenant, "key_stream_seconds", 3600, "h1", at=at, order_id=order) is False
    assert quota.record_duration(tenant, "key_stream_seconds", 1, "h1s", at=at, order_id=order) is True  # 1 s counts
    assert quota.record_duration(tenant, "key_stream_seconds", 0, "h2", at=at, order_id=order) is False
    assert quota.record_duration(tenant, "key_stream_seconds", -5, "h3", at=at, order_id=order) is False
    with pytest.raises(BadRequest, match="not a duration meter"):
        quota.record_duration(tenant, METER, 10, "h4", at=at, order_id=order)
    rows = list(UsageRecord.objects.for_tenant(tenant).order_by("pk"))
    assert [(r.meter, r.quantity, r.unit, r.created_at, r.order_id) for r in rows] == [
        ("key_stream_seconds", 3600, "second", at, order), ("key_stream_seconds", 1, "second", at, order)]


# --- outside a transaction --------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_reserve_and_settle_outside_a_transaction_keep_counters_equal_to_the_ledger(plan, monkeypatch):
    """As a request runs them (autocommit): on PostgreSQL the common case (the window's counter exists, the
    settlement is exactly the hold) goes in one round trip (``_pipeline``), everything else the general way;
    on SQLite always the general way. Either way counters == ledger + holds."""
    pipelined: list = []
    real = quota._pipeline
    monkeypatch.setattr(quota, "_pipeline", lambda *a, **k: pipelined.append(r := real(*a, **k)) or r)
    tenant = Tenant.objects.create(name="Auto", slug="auto", plan=plan)
    set_quota_overrides(tenant, {"qkd_key_bits.day": 1000, "qkd_key_bits.month": -1})
    postgres = uses_postgres()

    def used() -> int:
        return state(tenant, "qkd_key_bits.day").used

    quota.consume(tenant, METER, 1, "warm-up")  # the window's counter exists
    consumed: list = []
    real_consume = quota._consume_pipelined
    monkeypatch.setattr(quota, "_consume_pipelined",
                        lambda *a, **k: consumed.append(r := real_consume(*a, **k)) or r)
    long = "r" * 150 + "s" * 150
    record = quota.consume(tenant, METER, 100, "with-limits", reference=long, limits=quota.check(tenant, METER, 100))
    assert UsageRecord.objects.for_tenant(tenant).get(pk=record.pk).reference == long[:200] == record.reference
    assert consumed == ([record] if postgres else [None])  # on PostgreSQL in one round trip
    quota.release(tenant, METER, 100, "undo-with-limits")
    pipelined.clear()  # the pipelined consume above goes through _pipeline too; count the reservations' from here
    r = quota.reserve(tenant, METER, 300)
    assert used() == 301 and held(tenant) == 300
    exact = quota.settle(r, 300, "exact")
    assert not exact.replayed and UsageRecord.objects.for_tenant(tenant).get(pk=exact.pk).idempotency_key == "exact"
    assert used() == 301 == ledger(tenant) and held(tenant) == 0
    if postgres:  # both in one round trip each
        assert len(pipelined) == 2 and all(done is not None for done in pipelined)
    else:
        assert pipelined == []

    quota.settle(quota.reserve(tenant, METER, 200), 100, "less")
    assert used() == 401 == ledger(tenant) and held(tenant) == 0
    quota.settle(quota.reserve(tenant, METER, 100), 150, "more")
    assert used() == 551 == ledger(tenant) and held(tenant) == 0
    if postgres:  # the reservations pipelined, the uneven settlements not
        assert len(pipelined) == 4 and all(done is not None for done in pipelined)

    again = quota.settle(quota.reserve(tenant, METER, 300), 300, "exact")  # a replay: recorded once
    assert again.replayed and again.pk == exact.pk
    assert used() == 551 == ledger(tenant) and held(tenant) == 0
    with pytest.raises(QuotaExceeded):
        quota.reserve(tenant, METER, 450)
    assert used() == 551 and held(tenant) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_concurrent_releases_of_one_idempotency_key_give_back_once(plan):
    tenant = Tenant.objects.create(name="Releases", slug="releases", plan=plan)
    quota.consume(tenant, METER, 20 * 256, "taken")  # enough in the counter for every thread's release to fit
    ids = run_in_threads(16, lambda _: quota.release(tenant, METER, 256, "given-back").pk)
    assert len(set(ids)) == 1  # the losers of the race get the winner's row (the ledger's unique key decides)
    assert state(tenant, "qkd_key_bits.day").used == 19 * 256 == ledger(tenant)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_concurrent_releases_of_a_counters_last_bits_are_replays_not_conflicts(plan):
    """The counter holds exactly one release: the losers' UPDATE waits on the winner's row lock, then finds the
    counter empty. That is the same release again (a replay), not an over-release (Conflict)."""
    tenant = Tenant.objects.create(name="Last bits", slug="last-bits", plan=plan)
    for attempt in range(5):  # the race is not forced; five rounds make a lost one very likely to show
        quota.consume(tenant, METER, 256, f"taken-{attempt}")
        ids = run_in_threads(8, lambda _, a=attempt: quota.release(tenant, METER, 256, f"given-back-{a}").pk)
        assert len(set(ids)) == 1
        assert state(tenant, "qkd_key_bits.day").used == 0 == ledger(tenant)
