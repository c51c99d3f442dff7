"""The tenants' series of ``/metrics`` (registered with ``portal.metrics``): quota use and limits in the current
windows, read from the counters ``tenants.quota`` enforces, and tenants by status. A few queries per scrape,
whatever the number of tenants; one series per tenant and quota key (bounded: no label per key or request)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import Metric

from portal.metrics import gauge, register_collector

from .meters import QUOTA_KEYS, split_quota_key, window_bounds
from .models import PlanQuota, QuotaCounter, Tenant, TenantQuotaOverride


def tenant_families() -> Iterator[Metric]:
    """Quota use and limits (current windows) for every tenant."""

    tenants = {t.pk: (t.slug, t.plan_id) for t in Tenant.objects.only("slug", "plan_id")}
    plan_limits: dict[int, dict[str, int]] = {}
    for q in PlanQuota.objects.all():
        plan_limits.setdefault(q.plan_id, {})[q.quota_key] = q.limit
    overrides: dict[int, dict[str, int]] = {}
    for o in TenantQuotaOverride.objects.unscoped().all():
        overrides.setdefault(o.tenant_id, {})[o.quota_key] = o.limit
    now = datetime.now(UTC)
    window_start = {key: window_bounds(split_quota_key(key)[1], now)[0] for key in QUOTA_KEYS}
    used: dict[tuple[int, str], int] = {}
    for c in QuotaCounter.objects.unscoped().filter(window_start__in=set(window_start.values())):
        if window_start.get(c.quota_key) == c.window_start:
            used[(c.tenant_id, c.quota_key)] = c.used
    limit_samples, used_samples = [], []
    for tenant_id, (slug, plan_id) in tenants.items():
        limits = {**plan_limits.get(plan_id, {}), **overrides.get(tenant_id, {})}
        for key in QUOTA_KEYS:
            meter, window = split_quota_key(key)
            labels = [slug, key, meter, window.value]
            used_samples.append((labels, used.get((tenant_id, key), 0)))
            limit_samples.append((labels, limits.get(key, 0)))
    quota_labels = ["tenant", "quota", "meter", "window"]
    yield gauge("qxaas_tenant_quota_used", "Use of the tenant's quota in its current window (day, month) or "
                 "now (concurrent: live tunnels, sessions, streams). The month window of a cumulative meter is "
                 "a counter reset monthly: rate() of it is the tenant's consumption rate.", quota_labels, used_samples)
    yield gauge("qxaas_tenant_quota_limit", "The tenant's quota limit (-1 unlimited, 0 not in the plan).",
                 quota_labels, limit_samples)

    yield gauge("qxaas_tenants", "Tenants by status.", ["status"],
                 [([status], n) for status, n in _count_by(Tenant.objects.values_list("status", flat=True))])




def _count_by(values: Iterable[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return sorted(counts.items())


register_collector("tenants", tenant_families)
