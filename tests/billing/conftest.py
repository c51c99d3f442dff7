"""Billing fixtures: a plan with a price book for every meter, a tenant with a UTC monthly account, and
helpers that write ledger rows at chosen instants (the ledger is what billing reads)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import BillingAccount, PriceBook, PriceComponent, PriceTier
from tenants import quota
from tenants.meters import METERS
from tenants.models import UsageRecord

_seq = itertools.count()

# unit price, scale, label, allowance (billing units), tiers [(up_to, price)]
PRICES: dict[str, tuple[str, int, str, int, list[tuple[int | None, str]]]] = {
    "qkd_key_bits": ("0.40", 1_000_000, "Mbit", 10, [(100, "0.50"), (1000, "0.30")]),
    "entropy_bytes": ("2.00", 1_000_000_000, "GB", 1, []),
    "ipsec_tunnels": ("1.00", 1, "tunnel", 0, []),
    "tls_sessions": ("0.10", 1, "session", 0, []),
    "key_streams": ("0.20", 1, "stream", 0, []),
    "key_stream_seconds": ("0.30", 3600, "hour", 0, []),
    "ipsec_tunnel_seconds": ("0.12", 3600, "hour", 1, []),
    "tls_session_seconds": ("0.05", 3600, "hour", 0, []),
}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_book(price_plan, effective_from: datetime, prices=None, currency: str = "EUR") -> PriceBook:
    """A price book, back-dated (tests rate past months; the API refuses past dates)."""
    book = PriceBook(plan=price_plan, effective_from=effective_from, currency=currency, name="test")
    book.save(backdate=True)
    for meter, (price, scale, label, included, tiers) in (prices or PRICES).items():
        comp = PriceComponent(book=book, meter=meter, unit_price=Decimal(price), scale=scale, unit_label=label,
                              included=included)
        comp.save(backdate=True)
        for up_to, tier_price in tiers:
            PriceTier(component=comp, up_to=up_to, unit_price=Decimal(tier_price)).save(backdate=True)
    return book


def usage(tenant, meter: str, quantity: int, at: datetime, kind: str = "consume") -> UsageRecord:
    """One ledger row at ``at`` (duration meters through the quota service's own ``record_duration``)."""
    if METERS[meter].is_duration:
        assert quota.record_duration(tenant, meter, quantity, f"t-{next(_seq)}", at=at, order_id=uuid.uuid4())
        return UsageRecord.objects.for_tenant(tenant).order_by("-id").first()
    return UsageRecord.objects.create(tenant=tenant, meter=meter, kind=kind, quantity=quantity,
                                      unit=METERS[meter].unit, idempotency_key=f"t-{next(_seq)}", created_at=at)


@pytest.fixture
def billed(make_tenant, plan):
    """A tenant on a plan priced from 1 Jan 2026, billed monthly (UTC, day 1) from then."""
    tenant = make_tenant("acme")
    make_book(plan, utc(2026, 1, 1))
    BillingAccount.objects.create(tenant=tenant, timezone="UTC", anchor_day=1, starts_at=utc(2026, 1, 1))
    return tenant
