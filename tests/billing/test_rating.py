"""Rating and closing: a synthetic month with every meter, to the cent; price changes; allowance and tier
boundaries; late usage inside and after grace; immutability; periods in the tenant's time zone."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing import invoices, rating
from billing.models import BillingAccount, Invoice, InvoiceLine, PriceComponent
from billing.periods import period_containing
from tenants.meters import METERS

from .conftest import make_book, usage, utc

D = Decimal


def _february(tenant) -> None:
    """Every meter, with releases, rows just outside the month, and amounts that need rounding."""
    usage(tenant, "qkd_key_bits", 7_000_000, utc(2026, 1, 31, 23, 59, 59))  # January
    usage(tenant, "qkd_key_bits", 100_000_000, utc(2026, 2, 1))  # first instant of February
    usage(tenant, "qkd_key_bits", 50_123_457, utc(2026, 2, 20, 12))
    usage(tenant, "qkd_key_bits", -2_000_000, utc(2026, 2, 20, 12, 1), kind="release")  # failed delivery
    usage(tenant, "qkd_key_bits", 9_000_000, utc(2026, 3, 1))  # March
    usage(tenant, "entropy_bytes", 3_500_000_001, utc(2026, 2, 10))
    for day in (2, 3, 4):
        usage(tenant, "ipsec_tunnels", 1, utc(2026, 2, day))
    for day in (5, 6):
        usage(tenant, "ipsec_tunnels", -1, utc(2026, 2, day), kind="release")  # slots given back: no refund
    for _ in range(5):
        usage(tenant, "tls_sessions", 1, utc(2026, 2, 7))
    usage(tenant, "key_streams", 1, utc(2026, 2, 8))
    usage(tenant, "key_streams", 1, utc(2026, 2, 9))
    for hour in range(10):
        usage(tenant, "key_stream_seconds", 3600, utc(2026, 2, 11, hour))
    usage(tenant, "key_stream_seconds", 1800, utc(2026, 2, 11, 10))
    usage(tenant, "ipsec_tunnel_seconds", 3600, utc(2026, 2, 12, 0))
    usage(tenant, "ipsec_tunnel_seconds", 3605, utc(2026, 2, 12, 1))
    usage(tenant, "tls_session_seconds", 1100, utc(2026, 2, 13, 0))


# (meter, band, quantity in base units, amount): worked out by hand from conftest.PRICES.
FEBRUARY = [
    ("qkd_key_bits", "allowance", 10_000_000, "0.00"),
    ("qkd_key_bits", "tier 1", 90_000_000, "45.00"),           # 90 Mbit x 0.50
    ("qkd_key_bits", "tier 2", 48_123_457, "14.44"),           # 48.123457 Mbit x 0.30 = 14.4370371
    ("entropy_bytes", "allowance", 1_000_000_000, "0.00"),
    ("entropy_bytes", "base", 2_500_000_001, "5.00"),          # 2.500000001 GB x 2.00
    ("ipsec_tunnels", "base", 3, "3.00"),
    ("tls_sessions", "base", 5, "0.50"),
    ("key_streams", "base", 2, "0.40"),
    ("key_stream_seconds", "base", 37_800, "3.15"),            # 10.5 h x 0.30
    ("ipsec_tunnel_seconds", "allowance", 3600, "0.00"),
    ("ipsec_tunnel_seconds", "base", 3605, "0.12"),            # 1.0013889 h x 0.12 = 0.1201667
    ("tls_session_seconds", "base", 1100, "0.02"),             # 0.3055556 h x 0.05 = 0.0152778
]


def test_synthetic_month_with_every_meter_to_the_cent(billed):
    _february(billed)
    [jan, feb] = invoices.close_due(now=utc(2026, 3, 5))
    assert {line[0] for line in FEBRUARY} == set(METERS)  # every meter is exercised
    got = [(ln.meter, ln.band, ln.quantity, str(ln.amount)) for ln in feb.lines.all()]
    assert got == FEBRUARY
    rated_ledger = sum(D(a) for *_, a in FEBRUARY)
    assert feb.total == sum(ln.amount for ln in feb.lines.all()) == rated_ledger == D("71.63")
    assert (feb.status, feb.number, feb.currency) == ("finalized", "INV-000002", "EUR")
    assert (jan.number, jan.total) == ("INV-000001", D("0.00"))  # 7 Mbit: inside the allowance
    assert feb.period_start == utc(2026, 2, 1) and feb.period_end == utc(2026, 3, 1)


def test_closing_waits_for_grace_and_is_idempotent(billed, settings):
    settings.BILLING_GRACE_HOURS = 72
    usage(billed, "qkd_key_bits", 20_000_000, utc(2026, 2, 3))
    assert [p.month for p in invoices.due_periods(billed, now=utc(2026, 3, 3, 23))] == [1]  # Feb still in grace
    # A late row of February, recorded during its grace: it lands in February.
    usage(billed, "qkd_key_bits", 1_000_000, utc(2026, 2, 28, 23))
    closed = invoices.close_due(now=utc(2026, 3, 4))
    feb = closed[-1]
    assert feb.period_start == utc(2026, 2, 1)
    assert sum(ln.quantity for ln in feb.lines.filter(meter="qkd_key_bits")) == 21_000_000
    assert feb.total == D("5.50")  # 10 free + 11 Mbit x 0.50
    assert invoices.close_due(now=utc(2026, 3, 4)) == []  # nothing due any more
    assert invoices.close_period(billed, utc(2026, 2, 1), now=utc(2026, 3, 4)).pk == feb.pk  # twice: the same
    assert Invoice.objects.for_tenant(billed).count() == 2


def test_late_usage_after_grace_goes_to_the_next_invoice_with_a_note(billed):
    usage(billed, "qkd_key_bits", 148_000_000, utc(2026, 2, 3))
    feb = invoices.close_due(now=utc(2026, 3, 5))[-1]
    feb_total, feb_lines = feb.total, list(feb.lines.values_list("quantity", "amount"))
    # Recorded after February was finalized (e.g. a worker that was down), belonging to 28 February.
    usage(billed, "qkd_key_bits", 5_000_000, utc(2026, 2, 28, 10))
    usage(billed, "qkd_key_bits", 1_000_000, utc(2026, 3, 2))  # March's own usage (inside March's allowance)
    draft = invoices.refresh_draft(billed, at=utc(2026, 3, 10))
    late = [ln for ln in draft.lines.all() if ln.late_period_start is not None]
    # After February's 148 Mbit: tier 2 (0.30/Mbit) for the late 5 Mbit.
    assert [(ln.band, ln.quantity, ln.amount) for ln in late] == [("tier 2", 5_000_000, D("1.50"))]
    assert "recorded after it closed" in late[0].description
    assert "2026-02-01" in draft.notes
    mar = invoices.close_period(billed, utc(2026, 3, 1), now=utc(2026, 4, 5))
    assert mar.pk == draft.pk and mar.total == D("1.50")
    feb.refresh_from_db()
    assert feb.total == feb_total and list(feb.lines.values_list("quantity", "amount")) == feb_lines
    # Billed exactly once: April's draft has no late line for it any more.
    april = invoices.refresh_draft(billed, at=utc(2026, 4, 10))
    assert not april.lines.filter(late_period_start__isnull=False).exists()


def test_price_change_mid_period_applies_from_its_date(billed, plan):
    make_book(plan, utc(2026, 2, 15), prices={"qkd_key_bits": ("1.00", 1_000_000, "Mbit", 10, [])})
    usage(billed, "qkd_key_bits", 20_000_000, utc(2026, 2, 14, 23, 59, 59))
    usage(billed, "qkd_key_bits", 20_000_000, utc(2026, 2, 15))
    usage(billed, "entropy_bytes", 2_000_000_000, utc(2026, 2, 16))  # not priced in the new book: not billed
    feb = invoices.close_due(now=utc(2026, 3, 5))[-1]
    got = [(ln.segment_start.day, ln.band, ln.quantity, ln.amount) for ln in feb.lines.all()]
    assert got == [
        (1, "allowance", 10_000_000, D("0.00")),
        (1, "tier 1", 10_000_000, D("5.00")),
        # the period's count is at 20 Mbit: the new book's 10 Mbit allowance is already used up
        (15, "base", 20_000_000, D("20.00")),
    ]
    assert feb.total == D("25.00")


def test_price_books_are_never_retroactive(billed, plan):
    from billing.models import PriceBook

    with pytest.raises(ValidationError):
        PriceBook(plan=plan, effective_from=utc(2026, 2, 1)).save()
    book = PriceBook.objects.filter(plan=plan).first()
    with pytest.raises(ValidationError):
        book.save()  # in effect: locked
    with pytest.raises(ValidationError):
        PriceComponent(book=book, meter="qkd_key_bits", unit_price=1, scale=1, unit_label="bit").save()


@pytest.mark.parametrize(("bits", "expected"), [
    (10_000_000, [("allowance", 10_000_000, "0.00")]),
    (10_000_001, [("allowance", 10_000_000, "0.00"), ("tier 1", 1, "0.00")]),
    (100_000_000, [("allowance", 10_000_000, "0.00"), ("tier 1", 90_000_000, "45.00")]),
    (100_000_001, [("allowance", 10_000_000, "0.00"), ("tier 1", 90_000_000, "45.00"), ("tier 2", 1, "0.00")]),
    (1_000_000_000, [("allowance", 10_000_000, "0.00"), ("tier 1", 90_000_000, "45.00"),
                     ("tier 2", 900_000_000, "270.00")]),
    (1_001_000_000, [("allowance", 10_000_000, "0.00"), ("tier 1", 90_000_000, "45.00"),
                     ("tier 2", 900_000_000, "270.00"), ("above tiers", 1_000_000, "0.40")]),
])
def test_allowance_and_tier_boundaries(billed, bits, expected):
    usage(billed, "qkd_key_bits", bits, utc(2026, 2, 2))
    lines = rating.rate(billed, utc(2026, 2, 1), utc(2026, 3, 1))
    assert [(ln.band, ln.quantity, str(ln.amount)) for ln in lines] == expected


def test_rounding_is_half_up_per_line_and_the_total_sums_rounded_lines():
    assert rating.line_amount(5, D("0.001"), 1) == D("0.01")  # 0.005 -> 0.01 (half up)
    assert rating.line_amount(4, D("0.001"), 1) == D("0.00")
    assert rating.line_amount(-5, D("0.001"), 1) == D("-0.01")  # half away from zero, both signs
    assert rating.line_amount(1, D("1"), 3) == D("0.33")


def test_finalized_invoices_and_their_lines_are_immutable(billed):
    usage(billed, "qkd_key_bits", 20_000_000, utc(2026, 2, 3))
    feb = invoices.close_due(now=utc(2026, 3, 5))[-1]
    feb.total = D("0.01")
    with pytest.raises(ValidationError):
        feb.save()
    with pytest.raises(ValidationError):
        feb.delete()
    line = InvoiceLine.objects.filter(invoice=feb).first()
    line.amount = D("0")
    with pytest.raises(ValidationError):
        line.save()
    with pytest.raises(ValidationError):
        line.delete()


def test_period_in_the_tenants_time_zone_and_anchor_day(make_tenant):
    account = BillingAccount(tenant=make_tenant("tz"), timezone="Europe/Madrid", anchor_day=5)
    # 23:30 UTC on 4 March is 00:30 on 5 March in Madrid (CET, UTC+1): the new period has begun.
    assert period_containing(account, utc(2026, 3, 4, 23, 30)) == (utc(2026, 3, 4, 23), utc(2026, 4, 4, 22))
    assert period_containing(account, utc(2026, 3, 4, 22, 59)) == (utc(2026, 2, 4, 23), utc(2026, 3, 4, 23))
    start, end = period_containing(account, utc(2026, 12, 20))
    assert (start, end) == (utc(2026, 12, 4, 23), utc(2027, 1, 4, 23))
    assert end - start == timedelta(days=31)


def test_a_key_streams_duration_rows_fall_on_each_side_of_a_period_boundary(billed):
    """Real duration rows from services.orders (split at hours): 22:30 on 31 Jan to 01:15 on 1 Feb."""
    import uuid

    from services import orders
    from services.models import KeyStream, QkdNode, Sae

    node = QkdNode.objects.create(node_id="CAIT", kme_url="https://cait.invalid")
    src = Sae.objects.create(tenant=billed, name="s1", node=node)
    dst = Sae.objects.create(tenant=billed, name="s2", node=node)
    stream = KeyStream.objects.create(
        tenant=billed, ksid=uuid.uuid4(), backend_ksid=uuid.uuid4(), source=src, destination=dst,
        backend_source_sae="b1", backend_destination_sae="b2", qos={}, state="closed",
        activated_at=utc(2026, 1, 31, 22, 30), closed_at=utc(2026, 2, 1, 1, 15))
    assert orders.meter_duration(stream) == 9900
    assert orders.meter_duration(stream) == 0  # exactly once
    jan = rating.usage_sums(billed, utc(2026, 1, 1), utc(2026, 2, 1))
    feb = rating.usage_sums(billed, utc(2026, 2, 1), utc(2026, 3, 1))
    assert (jan["key_stream_seconds"], feb["key_stream_seconds"]) == (5400, 4500)
    [jan_inv, feb_inv] = invoices.close_due(now=utc(2026, 3, 5))
    assert jan_inv.total == D("0.45") and feb_inv.total == D("0.38")  # 1.5 h and 1.25 h x 0.30 (0.375 -> 0.38)
