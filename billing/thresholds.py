"""Quota threshold events (80 %, 100 %) from the quota counters, each threshold once per window.

A periodic task reads the current day and month windows' counters; a ``QuotaAlert`` row (unique per tenant,
quota key, window and threshold) is inserted when a threshold is reached, and only the run that inserts it
emits the webhook: two runs, or two workers, fire it once. Concurrent meters (slots held right now) are not
watched: their level goes up and down within one everlasting window.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import quota
from tenants.meters import UNLIMITED, Window, split_quota_key, window_bounds
from tenants.models import QuotaCounter, Tenant

from . import webhooks
from .models import QuotaAlert

THRESHOLDS = (80, 100)


def check_thresholds(now: datetime | None = None) -> list[QuotaAlert]:
    now = now or timezone.now()
    starts = {w: window_bounds(w, now)[0] for w in (Window.DAY, Window.MONTH)}
    counters = QuotaCounter.objects.unscoped().filter(used__gt=0, window_start__in=set(starts.values()))
    fired: list[QuotaAlert] = []
    limits_of: dict[int, dict[str, int]] = {}
    tenants = {t.pk: t for t in Tenant.objects.filter(pk__in={c.tenant_id for c in counters})
               .select_related("plan")}
    for counter in counters:
        _meter, window = split_quota_key(counter.quota_key)
        if window == Window.CONCURRENT or counter.window_start != starts[window]:
            continue
        tenant = tenants[counter.tenant_id]
        if tenant.pk not in limits_of:
            limits_of[tenant.pk] = quota.effective_limits(tenant)
        limit = limits_of[tenant.pk].get(counter.quota_key, 0)
        if limit == UNLIMITED or limit <= 0:
            continue
        for threshold in THRESHOLDS:
            if counter.used * 100 < limit * threshold:
                continue
            try:
                with transaction.atomic():
                    alert = QuotaAlert.objects.create(tenant=tenant, quota_key=counter.quota_key,
                                                      window_start=counter.window_start, threshold=threshold,
                                                      used=counter.used, limit=limit)
                    webhooks.emit("quota.threshold", tenant, {
                        "quota": counter.quota_key, "threshold_percent": threshold, "used": counter.used,
                        "limit": limit, "window_start": counter.window_start.isoformat()},
                        event_id=f"quota.threshold:{tenant.slug}:{counter.quota_key}:"
                                 f"{counter.window_start.isoformat()}:{threshold}")
                fired.append(alert)
            except IntegrityError:
                continue  # fired before in this window
    return fired
