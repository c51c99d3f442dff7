"""Concurrent period close (PostgreSQL, threads) makes one invoice and uses one number; credit notes."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from billing import invoices
from billing.models import BillingAccount, CreditNote, Invoice, NumberSequence
from portal.errors import BadRequest, Conflict
from tests.conftest import uses_postgres

from .conftest import make_book, usage, utc


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_close_on_postgres_makes_one_invoice(make_tenant, plan):
    if not uses_postgres():
        pytest.skip("the row-lock race is tested on PostgreSQL (DATABASE_URL)")
    make_book(plan, utc(2026, 1, 1))
    tenants = [make_tenant(f"race{i}") for i in range(2)]
    for tenant in tenants:
        BillingAccount.objects.create(tenant=tenant, starts_at=utc(2026, 2, 1))
        usage(tenant, "qkd_key_bits", 30_000_000, utc(2026, 2, 10))
    barrier = threading.Barrier(6)
    results, errors = [], []

    def worker(job: str) -> None:
        try:
            barrier.wait(timeout=30)
            if job == "close_due":
                results.extend(invoices.close_due(now=utc(2026, 3, 10)))
            else:
                results.append(invoices.close_period(tenants[0], utc(2026, 2, 1), now=utc(2026, 3, 10)))
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(job,)) for job in ["close_due"] * 3 + ["close_period"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    finalized = Invoice.objects.unscoped().filter(status="finalized").order_by("number")
    assert [(i.tenant.slug, i.number) for i in finalized] == [
        (i.tenant.slug, n) for i, n in zip(finalized, ["INV-000001", "INV-000002"], strict=True)]
    assert {i.tenant_id for i in finalized} == {t.pk for t in tenants}
    assert {r.pk for r in results} == {i.pk for i in finalized}  # every caller got one of the two
    assert NumberSequence.objects.get(name="qxaas:invoice").next_value == 3  # no number lost: gap-free
    assert all(i.total == Decimal("10.00") for i in finalized)


def test_credit_note_flow(billed):
    usage(billed, "qkd_key_bits", 30_000_000, utc(2026, 2, 10))  # 10 free + 20 x 0.50 = 10.00
    feb = invoices.close_due(now=utc(2026, 3, 5))[-1]
    draft = invoices.refresh_draft(billed, at=utc(2026, 3, 10))
    with pytest.raises(Conflict):
        invoices.issue_credit_note(draft, "draft", [("x", Decimal("1.00"))])
    with pytest.raises(BadRequest):
        invoices.issue_credit_note(feb, "bad amount", [("x", Decimal("0.001"))])
    note = invoices.issue_credit_note(feb, "link outage on 10 Feb", [("outage credit", Decimal("4.00"))])
    assert (note.number, note.total, note.currency, note.status) == ("CN-000001", Decimal("4.00"), "EUR", "issued")
    with pytest.raises(Conflict):  # 4 + 6.01 > 10.00
        invoices.issue_credit_note(feb, "too much", [("a", Decimal("6.00")), ("b", Decimal("0.01"))])
    second = invoices.issue_credit_note(feb, "rest", [("rest", Decimal("6.00"))])
    assert second.number == "CN-000002"
    feb.refresh_from_db()
    assert feb.total == Decimal("10.00") and feb.credited == Decimal("10.00")  # the invoice itself unchanged
    note.reason = "edited"
    with pytest.raises(Exception, match="immutable"):
        note.save()
    assert CreditNote.objects.for_tenant(billed).count() == 2


def test_make_book_in_another_currency_refuses_mixed_invoice(billed, plan, make_tenant):
    make_book(plan, utc(2026, 2, 15), prices={"qkd_key_bits": ("1.00", 1_000_000, "Mbit", 0, [])}, currency="USD")
    usage(billed, "qkd_key_bits", 20_000_000, utc(2026, 2, 3))
    usage(billed, "qkd_key_bits", 20_000_000, utc(2026, 2, 20))
    with pytest.raises(Conflict, match="several currencies"):
        invoices.close_period(billed, utc(2026, 2, 1), now=utc(2026, 3, 5))
    assert not Invoice.objects.for_tenant(billed).filter(status="finalized", period_start=utc(2026, 2, 1)).exists()
    # The beat job logs that tenant and goes on with the others.
    other = make_tenant("other")
    BillingAccount.objects.create(tenant=other, starts_at=utc(2026, 2, 1))
    usage(other, "qkd_key_bits", 30_000_000, utc(2026, 2, 3))
    closed = invoices.close_due(now=utc(2026, 3, 5))
    assert {(i.tenant.slug, i.period_start.month) for i in closed} >= {("other", 2)}
    assert ("acme", 2) not in {(i.tenant.slug, i.period_start.month) for i in closed}
