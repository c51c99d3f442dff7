"""make run's billing demo: the demo tenant's plan gets a price book, its metered usage shows on its draft."""

from __future__ import annotations

from decimal import Decimal

from django.core.management import call_command

from billing import invoices
from billing.models import AssetCost, PriceBook
from tenants import quota
from tenants.demo import bootstrap_demo
from tenants.models import Tenant


def test_demo_tenant_sees_a_running_draft(db):
    bootstrap_demo()
    call_command("bootstrap_billing_demo")
    call_command("bootstrap_billing_demo")  # idempotent
    tenant = Tenant.objects.get(slug="demo-lab")
    assert PriceBook.objects.filter(plan=tenant.plan).count() == 1
    assert AssetCost.objects.count() == 3
    quota.consume(tenant, "qkd_key_bits", 8_000_000, "demo-1")  # through the quota service, as requests do
    quota.consume(tenant, "entropy_bytes", 200 << 20, "demo-2")
    draft = invoices.refresh_draft(tenant)
    # research: 1 Mbit included, 7 x 0.50 = 3.50; 209,715,200 bytes x 2.00/GB = 0.4194 -> 0.42
    assert draft.status == "draft" and draft.total == Decimal("3.92")
    tenant.plan = tenant.plan.__class__.objects.get(slug="production")  # the day quota is 1 Gbit there
    tenant.save()
    quota.consume(tenant, "qkd_key_bits", 150_000_000, "demo-3")
    draft = invoices.refresh_draft(tenant)
    # production: 100 Mbit included, then tier 1 at 0.40/Mbit: (158 - 100) x 0.40
    assert draft.total == Decimal("23.20")
    assert invoices.refresh_drafts() >= 1
