"""Hourly usage rollups from the ledger (for charts and billing periods)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from .models import UsageRecord, UsageRollup


def rollup_usage(since: datetime | None = None) -> int:
    """Recompute the hourly sums from ``since`` (default: the last 2 hours) to now; returns rows written.

    Recomputing whole hours from the ledger makes the job idempotent and safe to run twice.
    """
    since = (since or timezone.now() - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    sums = (
        UsageRecord.objects.unscoped()
        .filter(created_at__gte=since)
        .annotate(hour=TruncHour("created_at"))
        .values("tenant_id", "meter", "hour")
        .annotate(quantity=Sum("quantity"), records=Count("id"))
    )
    written = 0
    with transaction.atomic():
        UsageRollup.objects.unscoped().filter(hour__gte=since).delete()
        for row in sums:
            UsageRollup.objects.create(**row)
            written += 1
    return written
