"""Service-order edges found untested by `make mutate` on services/orders.py."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from services import orders
from services.models import KeyStream
from tests.services.test_orders import duration_rows, place_stream, saes, tenant  # noqa: F401 - fixtures

State = KeyStream.State


def test_advance_sets_the_other_fields_on_the_order_in_memory_too(tenant, saes):  # noqa: F811
    stream = place_stream(tenant, saes)
    later = timezone.now() + timedelta(hours=1)
    assert orders.advance(stream, State.CONNECTED, expected=(State.OPENED,), expires_at=later, reason="joined")
    assert (stream.expires_at, stream.reason) == (later, "joined")  # without a refresh
    stored = KeyStream.objects.for_tenant(tenant).get(pk=stream.pk)
    assert (stored.expires_at, stored.reason) == (later, "joined")


def test_a_type_registered_without_expire_is_finished_as_expired(tenant, saes, monkeypatch):  # noqa: F811
    monkeypatch.setattr(orders, "_TYPES", {})
    orders.register(KeyStream)  # no expire hook: the default
    stream = place_stream(tenant, saes)
    KeyStream.objects.for_tenant(tenant).filter(pk=stream.pk).update(expires_at=timezone.now() - timedelta(1))
    assert orders.expire_due() == 1
    stream.refresh_from_db()
    assert (stream.state, stream.reason) == ("expired", "expired") and stream.closed_at is not None


def test_maintain_all_runs_each_types_own_maintenance(db, monkeypatch):
    ran = []
    monkeypatch.setattr(orders, "_TYPES", {})
    orders.register(KeyStream, maintain=lambda: ran.append("key_stream") or 7)
    assert orders.maintain_all()["key_stream"] == 7 and ran == ["key_stream"]


def test_metering_up_to_a_time_before_the_watermark_writes_nothing_and_keeps_the_watermark(tenant, saes):  # noqa: F811
    stream = place_stream(tenant, saes)
    orders.advance(stream, State.CONNECTED, expected=(State.OPENED,))
    watermark = timezone.now().replace(microsecond=0)
    KeyStream.objects.for_tenant(tenant).filter(pk=stream.pk).update(
        activated_at=watermark - timedelta(hours=2), metered_until=watermark)
    assert orders.meter_duration(stream, until=watermark - timedelta(minutes=30)) == 0
    assert orders.meter_duration(stream, until=watermark) == 0
    assert KeyStream.objects.for_tenant(tenant).get(pk=stream.pk).metered_until == watermark
    assert duration_rows(stream) == []


def test_one_types_failing_maintenance_does_not_stop_the_others(db, monkeypatch, caplog):
    monkeypatch.setattr(orders, "_TYPES", {})

    def broken():
        raise RuntimeError("backend gone")

    orders.register(KeyStream, maintain=broken)
    out = orders.maintain_all()  # does not raise: logged, retried on the next run
    assert "key_stream" not in out and out["expired"] == 0 and out["metered_seconds"] == 0
    assert "maintaining key_stream failed" in caplog.text


def test_an_order_never_activated_meters_nothing(tenant, saes):  # noqa: F811
    stream = place_stream(tenant, saes)
    assert orders.meter_duration(stream) == 0 and duration_rows(stream) == []


def test_a_reversed_span_has_no_pieces_and_a_long_reason_is_cut_at_2000_characters(tenant, saes):  # noqa: F811
    now = timezone.now()
    assert orders.duration_pieces(now, now - timedelta(hours=2)) == []
    stream = place_stream(tenant, saes)
    assert orders.finish(stream, "failed", "x" * 5000)
    assert len(stream.reason) == 2000 and len(KeyStream.objects.for_tenant(tenant).get(pk=stream.pk).reason) == 2000


def test_a_type_without_maintenance_does_not_stop_the_next_ones(db, monkeypatch):
    monkeypatch.setattr(orders, "_TYPES", {
        "first": orders.OrderType(KeyStream, lambda order: False, None),
        "second": orders.OrderType(KeyStream, lambda order: False, lambda: 7),
    })
    assert orders.maintain_all()["key_stream"] == 7


def test_a_failing_expiry_does_not_stop_metering_or_maintenance(tenant, saes, monkeypatch, caplog):  # noqa: F811
    def broken(order):
        raise RuntimeError("backend gone")

    monkeypatch.setattr(orders, "_TYPES", {})
    orders.register(KeyStream, expire=broken, maintain=lambda: 7)
    stream = place_stream(tenant, saes)
    KeyStream.objects.for_tenant(tenant).filter(pk=stream.pk).update(expires_at=timezone.now() - timedelta(1))
    out = orders.maintain_all()
    assert "expired" not in out and out["metered_seconds"] == 0 and out["key_stream"] == 7
    assert "service orders: expired failed" in caplog.text


def test_place_names_the_order_in_the_ledger_by_default(tenant, saes):  # noqa: F811
    from tenants.models import UsageRecord

    stream = place_stream(tenant, saes)
    row = UsageRecord.objects.for_tenant(tenant).get(order_id=stream.uuid)
    assert row.reference == f"key_stream:{stream.uuid}"


def test_hourly_metering_skips_types_without_a_duration_meter_returns_the_seconds_and_stops_at_the_hour(
        tenant, saes, monkeypatch):  # noqa: F811
    from types import SimpleNamespace

    monkeypatch.setattr(orders, "_TYPES", {
        "unmetered": orders.OrderType(SimpleNamespace(duration_meter=None, order_kind="unmetered"),
                                      lambda order: False, None),
        "key_stream": orders.OrderType(KeyStream, lambda order: False, None),
    })
    stream = place_stream(tenant, saes)
    orders.advance(stream, State.CONNECTED, expected=(State.OPENED,))
    now = timezone.now()
    last_hour = now.replace(minute=0, second=0, microsecond=0)
    activated = last_hour - timedelta(hours=2, minutes=10)
    KeyStream.objects.for_tenant(tenant).filter(pk=stream.pk).update(activated_at=activated, metered_until=None)
    written = orders.meter_durations(now)
    assert written == sum(r.quantity for r in duration_rows(stream)) == 2 * 3600 + 600
    assert KeyStream.objects.for_tenant(tenant).get(pk=stream.pk).metered_until == last_hour  # exactly the hour
