"""Usage over time from the ledger, bucketed for charts (the dashboard and the usage page).

Read from the ledger itself (not the hourly rollups) so a chart moves as soon as something is metered.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from .meters import ENTROPY_BYTES, KEY_BITS, METERS
from .models import Tenant, UsageRecord

PERIODS = {"day": (timedelta(hours=24), "hour"), "week": (timedelta(days=7), "day"),
           "month": (timedelta(days=30), "day")}
ALWAYS_CHARTED = (KEY_BITS, ENTROPY_BYTES)


def buckets(start: datetime, end: datetime, step: str) -> list[datetime]:
    """The bucket starts covering [start, end): whole hours or whole days (UTC)."""
    if step == "hour":
        first, delta = start.replace(minute=0, second=0, microsecond=0), timedelta(hours=1)
    else:
        first, delta = start.replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1)
    out = []
    at = first
    while at < end and len(out) < 1000:  # bounded: a month of hours is 720
        out.append(at)
        at += delta
    return out


def series(tenant: Tenant, meter: str, start: datetime, end: datetime, step: str) -> list[tuple[datetime, int]]:
    """Net usage (consumes minus releases) of ``meter`` per bucket, zero-filled."""
    trunc = TruncHour if step == "hour" else TruncDay
    rows = (UsageRecord.objects.for_tenant(tenant).filter(meter=meter, created_at__gte=start, created_at__lt=end)
            .annotate(bucket=trunc("created_at")).values("bucket").annotate(total=Sum("quantity")))
    totals = {r["bucket"]: r["total"] for r in rows}
    return [(b, int(totals.get(b, 0))) for b in buckets(start, end, step)]


def label(at: datetime, step: str) -> str:
    return at.strftime("%H:00") if step == "hour" else at.strftime("%b %d")


def charted_meters(tenant: Tenant, since: datetime) -> list[str]:
    """The meters worth a chart: key bits and entropy always, any other with usage in the period."""
    used = set(UsageRecord.objects.for_tenant(tenant).filter(created_at__gte=since)
               .values_list("meter", flat=True).distinct())
    return [m for m in METERS if m in ALWAYS_CHARTED or m in used]


def period_charts(tenant: Tenant, period: str, now: datetime | None = None) -> list[dict]:
    """One chart's data per charted meter over ``period`` (day: hourly, week/month: daily)."""
    span, step = PERIODS.get(period, PERIODS["day"])
    end = now or timezone.now()
    start = end - span
    charts = []
    for meter in charted_meters(tenant, start):
        points = series(tenant, meter, start, end + timedelta(seconds=1), step)
        charts.append({"meter": meter, "label": METERS[meter].label, "unit": METERS[meter].unit + "s",
                       "points": [(label(at, step), value) for at, value in points],
                       "total": sum(v for _, v in points)})
    return charts
