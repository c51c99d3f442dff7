"""The service-order lifecycle (services.orders): one slot taken and given back once, transitions won by one
worker, active time metered once in hour-sized ledger rows. Key streams are the order type exercised here
(rows made directly: the backend plays no part in the lifecycle)."""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from portal.errors import QuotaExceeded
from services import orders
from services.models import KeyStream, QkdNode, Sae
from tenants import quota
from tenants.meters import KEY_STREAM_SECONDS, KEY_STREAMS
from tenants.models import Tenant, UsageRecord
from tenants.services import set_quota_overrides
from tests.conftest import uses_postgres
from tests.fixtures import run_in_threads

State = KeyStream.State


def slots_used(tenant: Tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == KEY_STREAMS)


def duration_rows(order) -> list[UsageRecord]:
    return list(UsageRecord.objects.for_tenant(order.tenant_id).filter(
        meter=KEY_STREAM_SECONDS, order_id=order.uuid).order_by("created_at"))


@pytest.fixture
def tenant(make_tenant) -> Tenant:
    return make_tenant("orders")


@pytest.fixture
def saes(tenant) -> tuple[Sae, Sae]:
    a = QkdNode.objects.create(node_id="A", kme_url="https://127.0.0.1:1", backend_sae_ids=["sae-a"])
    b = QkdNode.objects.create(node_id="B", kme_url="https://127.0.0.1:2", backend_sae_ids=["sae-b"])
    return Sae.objects.create(tenant=tenant, name="app-a", node=a), Sae.objects.create(tenant=tenant, name="app-b",
                                                                                       node=b)


def place_stream(tenant: Tenant, saes: tuple[Sae, Sae], **fields) -> KeyStream:
    source, destination = saes
    return orders.place(KeyStream, tenant, ksid=uuid.uuid4(), backend_ksid=uuid.uuid4(), source=source,
                        destination=destination, backend_source_sae="sae-a", backend_destination_sae="sae-b",
                        qos={"Key_chunk_size": 32, "Max_bps": 8000, "TTL": 600},
                        expires_at=timezone.now() + timedelta(minutes=10), **fields)


def backdate_activation(order: KeyStream, at: datetime) -> None:
    KeyStream.objects.for_tenant(order.tenant_id).filter(pk=order.pk).update(activated_at=at, metered_until=None)
    order.refresh_from_db()


def test_place_takes_a_slot_and_writes_the_row_in_one_transaction(tenant, saes):
    stream = place_stream(tenant, saes)
    assert stream.state == State.OPENED and stream.activated_at is None and slots_used(tenant) == 1
    placed = UsageRecord.objects.for_tenant(tenant).get(meter=KEY_STREAMS)
    assert placed.order_id == stream.uuid and placed.quantity == 1

    set_quota_overrides(tenant, {KEY_STREAMS: 1})
    with pytest.raises(QuotaExceeded) as refused:
        place_stream(tenant, saes)
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    assert KeyStream.objects.for_tenant(tenant).count() == 1 and slots_used(tenant) == 1


def test_place_enqueues_provisioning_only_after_commit(tenant, saes, django_capture_on_commit_callbacks):
    seen = []
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stream = place_stream(tenant, saes, on_commit=lambda order: seen.append(
            KeyStream.objects.for_tenant(tenant).filter(pk=order.pk).exists()))
    assert len(callbacks) == 1 and seen == [True] and stream.pk


def test_advance_is_won_once_and_starts_the_clock(tenant, saes):
    stream = place_stream(tenant, saes)
    other_worker = KeyStream.objects.for_tenant(tenant).get(pk=stream.pk)
    assert orders.advance(stream, State.CONNECTED, expected=(State.OPENED,)) is True
    assert orders.advance(other_worker, State.CONNECTED, expected=(State.OPENED,)) is False
    assert stream.activated_at is not None and stream.metered_until == stream.activated_at
    first = stream.activated_at
    assert orders.advance(stream, State.CONNECTED, expected=(State.CONNECTED,)) is True
    assert stream.activated_at == first  # activated once
    with pytest.raises(ValueError, match="finish"):
        orders.advance(stream, State.CLOSED, expected=(State.CONNECTED,))


def test_finish_releases_once_and_meters_the_rest(tenant, saes):
    stream = place_stream(tenant, saes)
    orders.advance(stream, State.CONNECTED, expected=(State.OPENED,))
    backdate_activation(stream, timezone.now() - timedelta(seconds=42))
    assert orders.finish(stream, State.CLOSED, "done") is True
    assert orders.finish(stream, State.EXPIRED) is False
    stream.refresh_from_db()
    assert stream.state == State.CLOSED and stream.reason == "done" and slots_used(tenant) == 0
    seconds = sum(r.quantity for r in duration_rows(stream))
    assert seconds == math.floor(stream.closed_at.timestamp()) - math.floor(stream.activated_at.timestamp())
    assert 42 <= seconds <= 44
    assert orders.meter_duration(stream) == 0  # nothing after the close


def test_an_order_open_across_hour_boundaries_has_one_row_per_hour_adding_up(tenant, saes):
    stream = place_stream(tenant, saes)
    orders.advance(stream, State.CONNECTED, expected=(State.OPENED,))
    activated = timezone.now() - timedelta(minutes=90)
    backdate_activation(stream, activated)
    # The periodic job meters the whole hours so far, the close the remainder.
    assert orders.meter_durations() > 0
    assert orders.meter_durations() == 0
    orders.finish(stream, State.CLOSED)
    stream.refresh_from_db()
    rows = duration_rows(stream)
    assert len(rows) in (2, 3)  # 90 minutes touch two or three clock hours
    for row in rows:  # each row lies inside one clock hour
        hour = row.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        assert row.created_at + timedelta(seconds=row.quantity) <= hour + timedelta(hours=1, seconds=1)
        assert row.unit == "second" and row.order_id == stream.uuid
    for earlier, later in itertools.pairwise(rows):
        assert later.created_at.minute == later.created_at.second == 0 and later.created_at > earlier.created_at
    assert sum(r.quantity for r in rows) == (math.floor(stream.closed_at.timestamp())
                                             - math.floor(activated.timestamp()))


def test_duration_pieces_add_up_exactly():
    start = datetime(2026, 12, 5, 9, 59, 30, 700_000, tzinfo=UTC)
    end = datetime(2026, 12, 5, 11, 0, 45, 200_000, tzinfo=UTC)
    pieces = orders.duration_pieces(start, end)
    assert [p[0] for p in pieces] == [start, datetime(2026, 12, 5, 10, tzinfo=UTC), datetime(2026, 12, 5, 11,
                                                                                              tzinfo=UTC)]
    assert [p[1] for p in pieces] == [30, 3600, 45]
    assert sum(p[1] for p in pieces) == math.floor(end.timestamp()) - math.floor(start.timestamp())


def test_expiry_by_the_periodic_job_uses_the_types_hook(tenant, saes):
    stream = place_stream(tenant, saes)
    KeyStream.objects.for_tenant(tenant).filter(pk=stream.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    ended = []
    kind = next(k for k in orders.order_types() if k.model is KeyStream)
    original = orders._TYPES[KeyStream.order_kind]
    # The key streams' real hook closes the backend stream (tested in test_streams.py against the twin); here
    # the lifecycle alone is under test, so the hook only finishes the order.
    orders._TYPES[KeyStream.order_kind] = orders.OrderType(
        KeyStream, lambda order: ended.append(order.pk) or orders.finish(order, State.EXPIRED), kind.maintain)
    try:
        assert orders.expire_due() == 1
        assert orders.expire_due() == 0
    finally:
        orders._TYPES[KeyStream.order_kind] = original
    assert ended == [stream.pk] and slots_used(tenant) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_an_order_closed_twice_concurrently_releases_its_slot_once(tenant, saes):
    stream = place_stream(tenant, saes)
    orders.advance(stream, State.CONNECTED, expected=(State.OPENED,))
    backdate_activation(stream, timezone.now() - timedelta(seconds=30))
    won = run_in_threads(8, lambda _: orders.finish(KeyStream.objects.for_tenant(tenant).get(pk=stream.pk),
                                                  State.CLOSED))
    assert won.count(True) == 1
    assert slots_used(tenant) == 0
    releases = UsageRecord.objects.for_tenant(tenant).filter(meter=KEY_STREAMS, kind=UsageRecord.Kind.RELEASE)
    assert releases.count() == 1 and releases.get().order_id == stream.uuid
    stream.refresh_from_db()
    assert sum(r.quantity for r in duration_rows(stream)) == (math.floor(stream.closed_at.timestamp())
                                                             - math.floor(stream.activated_at.timestamp()))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the concurrency guarantee is tested on PostgreSQL")
def test_the_maintenance_job_run_concurrently_meters_each_second_once(tenant, saes):
    streams = [place_stream(tenant, saes) for _ in range(2)]
    activated = timezone.now() - timedelta(hours=3, minutes=10)
    for stream in streams:
        orders.advance(stream, State.CONNECTED, expected=(State.OPENED,))
        backdate_activation(stream, activated)
    written = run_in_threads(4, lambda _: orders.meter_durations())
    last_hour = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    expected = math.floor(last_hour.timestamp()) - math.floor(activated.timestamp())
    assert sum(written) == 2 * expected
    for stream in streams:
        rows = duration_rows(stream)
        assert sum(r.quantity for r in rows) == expected and len(rows) in (3, 4)
        assert len({r.created_at for r in rows}) == len(rows)
    assert orders.meter_durations() == 0
