"""Billing periods: monthly, starting on the account's anchor day at local midnight in the tenant's time zone.

Bounds are returned as aware UTC datetimes (start inclusive, end exclusive), so a period is exactly the ledger
rows with ``start <= created_at < end``. Daylight-saving changes move the UTC offset, never the local midnight.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from .models import BillingAccount


def _local_start(year: int, month: int, day: int, tz: ZoneInfo) -> datetime:
    return datetime(year, month, day, tzinfo=tz)


def _shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def period_containing(account: BillingAccount, at: datetime) -> tuple[datetime, datetime]:
    """The period ``[start, end)`` of ``account`` that contains the instant ``at``."""
    tz = ZoneInfo(account.timezone)
    local = at.astimezone(tz)
    year, month = local.year, local.month
    if local < _local_start(year, month, account.anchor_day, tz):
        year, month = _shift(year, month, -1)
    start = _local_start(year, month, account.anchor_day, tz)
    end = _local_start(*_shift(year, month, 1), account.anchor_day, tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def next_period(account: BillingAccount, start: datetime) -> tuple[datetime, datetime]:
    """The period right after the one starting at ``start``."""
    return period_containing(account, period_containing(account, start)[1])
