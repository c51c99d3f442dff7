"""Rating: usage-ledger rows of a period -> invoice lines, exactly and in a documented order.

For each meter, in this order (docs/billing.md, "Rating order"):

1. **Sum** the ledger in the period: cumulative and duration meters by their net quantity (a release row is a
   refund and counts negative); concurrent meters (tunnels, sessions, streams) by the orders placed (the
   ``consume`` rows; giving a slot back is not a refund).
2. **Split at price-change dates**: the period is cut where a price book of the tenant's plan takes effect;
   each segment's usage is priced by the book in effect then. Usage before the plan's first book is not billed.
3. **Allowance first, then graduated tiers**: positions are counted through the period in base units (bits,
   bytes, seconds, orders), segment after segment. Positions below the allowance cost nothing; above it each
   position is priced by the tier whose range holds it (tier bounds count the whole period's quantity,
   allowance included); above the last tier, the component's unit price. A segment's allowance and tiers are
   those of its own book, at the position the period has reached.
4. **Money**: each line is ``quantity x unit_price / scale`` computed exactly with ``Decimal`` and rounded once
   to cents, ROUND_HALF_UP; the invoice total is the sum of the rounded lines (no rounding after that).

Late usage (rows of an already finalized period, recorded after it closed) is rated as if it came after all of
that period's usage already billed, at the prices of its own segment (``rate(..., start_positions=...)``).
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Q, Sum

from tenants.meters import METERS, Window
from tenants.models import Tenant, UsageRecord

from .models import PriceBook, PriceComponent

CENT = Decimal("0.01")
# Exact enough for any product of a 64-bit quantity and an 8-decimal price (then divided by the scale).
_CONTEXT = decimal.Context(prec=60, rounding=ROUND_HALF_UP)


def round_money(value: Decimal) -> Decimal:
    """Cents, half away from zero (ROUND_HALF_UP in Decimal's sense)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP, context=_CONTEXT)


def line_amount(quantity: int, unit_price: Decimal, scale: int) -> Decimal:
    """The rounded amount of ``quantity`` base units at ``unit_price`` per ``scale`` base units."""
    exact = _CONTEXT.divide(_CONTEXT.multiply(Decimal(quantity), unit_price), Decimal(scale))
    return round_money(exact)


def counts_orders(meter: str) -> bool:
    """Concurrent meters are billed per order placed, not by their net (which returns to zero)."""
    return Window.CONCURRENT in METERS[meter].windows


@dataclass(frozen=True)
class Segment:
    start: datetime
    end: datetime
    book: PriceBook
    components: dict[str, PriceComponent] = field(hash=False, compare=False)


@dataclass
class RatedLine:
    meter: str
    description: str
    band: str
    quantity: int
    unit_label: str
    scale: int
    unit_price: Decimal
    amount: Decimal
    segment_start: datetime
    segment_end: datetime
    book: PriceBook
    late_period_start: datetime | None = None


def segments(tenant: Tenant, start: datetime, end: datetime) -> list[Segment]:
    """``[start, end)`` cut at the effective dates of the tenant's plan's price books."""
    books = list(PriceBook.objects.filter(plan_id=tenant.plan_id, effective_from__lt=end)
                 .order_by("effective_from").prefetch_related("components__tiers"))
    result: list[Segment] = []
    for i, book in enumerate(books):
        seg_start = max(book.effective_from, start)
        seg_end = min(books[i + 1].effective_from, end) if i + 1 < len(books) else end
        if seg_start < seg_end:
            result.append(Segment(seg_start, seg_end, book, {c.meter: c for c in book.components.all()}))
    return result


def usage_sums(tenant: Tenant, start: datetime, end: datetime) -> dict[str, int]:
    """Billable quantity per meter in ``[start, end)`` (one query)."""
    rows = (UsageRecord.objects.for_tenant(tenant).filter(created_at__gte=start, created_at__lt=end)
            .order_by().values("meter")
            .annotate(net=Sum("quantity"), placed=Sum("quantity", filter=Q(kind=UsageRecord.Kind.CONSUME))))
    return {r["meter"]: int((r["placed"] if counts_orders(r["meter"]) else r["net"]) or 0)
            for r in rows if r["meter"] in METERS}


def _bands(component: PriceComponent) -> list[tuple[float | int, Decimal, str]]:
    """(upper bound in base units, unit price, label) from position 0 upwards; the last is unbounded."""
    bands: list[tuple[float | int, Decimal, str]] = []
    tiers = list(component.tiers.all())
    if component.included:
        bands.append((component.included * component.scale, Decimal(0), "allowance"))
    for i, tier in enumerate(tiers, start=1):
        bands.append((float("inf") if tier.up_to is None else tier.up_to * component.scale, tier.unit_price,
                      f"tier {i}"))
        if tier.up_to is None:
            return bands
    bands.append((float("inf"), component.unit_price, "above tiers" if tiers else "base"))
    return bands


def split(component: PriceComponent, position: int, quantity: int) -> list[tuple[str, int, Decimal]]:
    """The bands ``quantity`` base units cover from ``position`` on: (label, quantity, unit price).

    A negative quantity (net refunds in a segment) walks back from ``position`` and gives negative quantities."""
    lo_pos, hi_pos, sign = (position, position + quantity, 1) if quantity >= 0 else (position + quantity,
                                                                                     position, -1)
    out = []
    lower: float | int = 0
    for upper, price, label in _bands(component):
        overlap = min(hi_pos, upper) - max(lo_pos, lower)
        if overlap > 0:
            out.append((label, sign * int(overlap), price))
        lower = upper
    return out


def _describe(meter: str, band: str, component: PriceComponent, late_of: datetime | None) -> str:
    text = f"{METERS[meter].label}, {band} (per {component.unit_label})"
    if late_of is not None:
        text += f" - late usage of the period from {late_of:%Y-%m-%d}, recorded after it closed"
    return text


def rate(tenant: Tenant, start: datetime, end: datetime, *, start_positions: dict[str, int] | None = None,
         quantities: dict[datetime, dict[str, int]] | None = None,
         late_of: datetime | None = None) -> list[RatedLine]:
    """Rate the tenant's usage in ``[start, end)`` into lines (allowance lines included, at 0).

    ``quantities``: per segment start, the quantities to rate instead of the ledger's (late usage);
    ``start_positions``: where each meter's count starts (late usage: what the period already billed)."""
    lines: list[RatedLine] = []
    positions: dict[str, int] = defaultdict(int, start_positions or {})
    segs = segments(tenant, start, end)
    sums = {seg.start: (quantities or {}).get(seg.start, {}) if quantities is not None
            else usage_sums(tenant, seg.start, seg.end) for seg in segs}
    for meter in METERS:
        for seg in segs:
            component = seg.components.get(meter)
            quantity = sums[seg.start].get(meter, 0)
            if component is None or quantity == 0:
                continue  # not priced in this book: not billed
            for band, qty, price in split(component, positions[meter], quantity):
                lines.append(RatedLine(
                    meter=meter, description=_describe(meter, band, component, late_of), band=band, quantity=qty,
                    unit_label=component.unit_label, scale=component.scale, unit_price=price,
                    amount=line_amount(qty, price, component.scale), segment_start=seg.start, segment_end=seg.end,
                    book=seg.book, late_period_start=late_of))
            positions[meter] += quantity
    return lines


def total(lines: list[RatedLine]) -> Decimal:
    """The invoice total: the sum of the already rounded lines."""
    return sum((line.amount for line in lines), Decimal("0.00"))
