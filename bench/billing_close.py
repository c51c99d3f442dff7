"""Benchmark: closing a billing period (rating the month's ledger into lines, numbering, finalizing) against the
floor of reading the same ledger (one ``SUM ... GROUP BY meter`` over the month).

    .venv/bin/python bench/billing_close.py [--rows 200000]

PostgreSQL when DATABASE_URL names one (a temporary database is created and dropped), else SQLite. Writes
``--rows`` ledger rows spread over a month and every meter, then times (best of 3) the floor query, a draft
refresh and (once: it is final) the close, and prints their ratios to the floor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway_common import TemporaryDatabase, setup_django


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="qxaas-bench-billing-"))
    db = TemporaryDatabase(var)
    try:
        setup_django(var, db.url, var / "twin")
        from django.db import connection
        from django.db.models import Sum

        from billing import invoices
        from billing.demo import DEMO_PRICES
        from billing.models import BillingAccount, Invoice, PriceBook, PriceComponent
        from tenants.meters import METERS
        from tenants.models import Plan, Tenant, UsageRecord

        start = datetime(2026, 2, 1, tzinfo=UTC)
        plan = Plan.objects.create(name="Bench", slug="bench")
        book = PriceBook(plan=plan, effective_from=start - timedelta(days=31), currency="EUR")
        book.save(backdate=True)
        for meter in METERS:
            price, scale, label, included, _ = DEMO_PRICES["production"].get(meter, ("0.10", 1, "unit", 0, []))
            PriceComponent(book=book, meter=meter, unit_price=Decimal(price), scale=scale, unit_label=label,
                           included=included).save(backdate=True)
        tenant = Tenant.objects.create(name="Bench", slug="bench", plan=plan)
        BillingAccount.objects.create(tenant=tenant, starts_at=start)
        meters = list(METERS)
        step = timedelta(days=28) / args.rows
        rows = [UsageRecord(tenant=tenant, meter=meters[i % len(meters)], quantity=256 + i % 1000,
                            unit=METERS[meters[i % len(meters)]].unit, idempotency_key=f"b{i}",
                            order_id=uuid.uuid4() if METERS[meters[i % len(meters)]].is_duration else None,
                            created_at=start + step * i) for i in range(args.rows)]
        t0 = time.perf_counter()
        UsageRecord.objects.bulk_create(rows, batch_size=5000)
        insert_s = time.perf_counter() - t0
        end = start + timedelta(days=28)
        ledger = UsageRecord.objects.for_tenant(tenant).filter(created_at__gte=start, created_at__lt=end)

        def floor():
            list(ledger.order_by().values("meter").annotate(s=Sum("quantity")))

        floor_s = best_of(floor)
        draft_s = best_of(lambda: invoices.refresh_draft(tenant, at=start + timedelta(days=1)))

        close_s = best_of(lambda: invoices.close_period(tenant, start, now=end + timedelta(days=10)), n=1)
        invoice = Invoice.objects.for_tenant(tenant).get(period_start=start)
        print(f"database: {connection.vendor}; {args.rows:,} ledger rows over {len(meters)} meters "
              f"(inserted in {insert_s:.1f} s)")
        print(f"floor (SUM ... GROUP BY meter over the month): {floor_s * 1000:.1f} ms")
        print(f"draft refresh: {draft_s * 1000:.1f} ms (x{draft_s / floor_s:.2f} of the floor)")
        print(f"period close: {close_s * 1000:.1f} ms (x{close_s / floor_s:.2f} of the floor); "
              f"{invoice.lines.count()} lines, total {invoice.total} {invoice.currency}; "
              f"{args.rows / close_s:,.0f} ledger rows/s")
        return 0
    finally:
        db.drop()


if __name__ == "__main__":
    sys.exit(main())
