"""Invoices: a draft kept current during the period, closed after the grace period, numbered gap-free.

* ``refresh_draft`` re-rates the open period (and any period still in grace) from the ledger: the tenant's
  running total.
* ``close_period`` finalizes one period: under the billing account's row lock (``SELECT ... FOR UPDATE`` on
  PostgreSQL; SQLite's IMMEDIATE write transaction serialises writers), re-rates it from the ledger, takes the
  next number of the operator's gap-free sequence in the same transaction and marks it finalized. Running it
  twice, or on two workers at once, makes one invoice: the second finds it finalized (and the unique
  ``(tenant, period_start)`` constraint backs that up).
* Late usage: a row whose ``created_at`` falls in a period still in grace (``period_end + BILLING_GRACE_HOURS``)
  is simply rated into that period by the close. A row of an already finalized period (recorded after the
  close) is found by comparing the ledger with what that period's invoices billed, and is billed on the next
  invoice as a separate line with a note. What a period billed is never billed again: exactly once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from portal.errors import BadRequest, Conflict
from tenants.models import Tenant

from . import rating, webhooks
from .models import BillingAccount, CreditNote, CreditNoteLine, Invoice, InvoiceLine, NumberSequence, PriceBook
from .periods import next_period, period_containing

log = logging.getLogger(__name__)

# How many finalized periods back the late-usage check looks (older rows than that are not billed late).
LATE_LOOKBACK_PERIODS = 12
# At most this many periods closed per tenant per run (a beat job that was down for years catches up slowly).
MAX_CLOSE_PER_RUN = 24


def grace() -> timedelta:
    return timedelta(hours=settings.BILLING_GRACE_HOURS)


def account_for(tenant: Tenant) -> BillingAccount:
    """The tenant's billing account, created on first use: billing starts when the tenant does, or when its plan
    got its first price book if that was later (no empty invoices for the months before prices existed)."""
    account = BillingAccount.objects.for_tenant(tenant).filter(tenant=tenant).first()
    if account is not None:
        return account
    first_book = PriceBook.objects.filter(plan_id=tenant.plan_id).order_by("effective_from").first()
    starts_at = max(tenant.created_at, first_book.effective_from) if first_book else tenant.created_at
    account, _ = BillingAccount.objects.for_tenant(tenant).get_or_create(
        tenant=tenant, defaults={"starts_at": starts_at, "timezone": settings.BILLING_DEFAULT_TIMEZONE})
    return account


def is_billable(tenant: Tenant) -> bool:
    """Tenants whose plan has a price book are billed."""
    return PriceBook.objects.filter(plan_id=tenant.plan_id).exists()


def next_number(kind: str) -> str:
    """The next number of the operator's gap-free sequence of ``kind`` (invoice, credit_note).

    Must run inside the transaction that makes the document final: the row lock serialises issuers and a
    rollback gives the number back, so numbers have no gaps."""
    name = f"{settings.BILLING_OPERATOR}:{kind}"
    NumberSequence.objects.get_or_create(name=name)
    seq = NumberSequence.objects.select_for_update().get(name=name)
    value = seq.next_value
    NumberSequence.objects.filter(pk=seq.pk).update(next_value=value + 1)
    prefix = settings.BILLING_INVOICE_PREFIX if kind == "invoice" else settings.BILLING_CREDIT_NOTE_PREFIX
    return f"{prefix}-{value:06d}"


# --- what finalized invoices already billed, and the late usage that follows ---------------------------

def _billed(tenant: Tenant, period_start: datetime) -> dict[datetime, dict[str, int]]:
    """Quantity per (segment start, meter) that finalized invoices billed for the period starting there."""
    billed: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    own = InvoiceLine.objects.filter(invoice__tenant=tenant, invoice__status=Invoice.Status.FINALIZED,
                                     invoice__period_start=period_start, late_period_start__isnull=True)
    late = InvoiceLine.objects.filter(invoice__tenant=tenant, invoice__status=Invoice.Status.FINALIZED,
                                      late_period_start=period_start)
    for qs in (own, late):
        for row in qs.order_by().values("segment_start", "meter").annotate(q=Sum("quantity")):
            billed[row["segment_start"]][row["meter"]] += int(row["q"])
    return billed


def late_lines(tenant: Tenant, before: datetime) -> list[rating.RatedLine]:
    """Lines for usage of finalized periods before ``before`` that the ledger has but no invoice billed."""
    lines: list[rating.RatedLine] = []
    finalized = (Invoice.objects.for_tenant(tenant).filter(status=Invoice.Status.FINALIZED, period_start__lt=before)
                 .order_by("-period_start")[:LATE_LOOKBACK_PERIODS])
    for invoice in reversed(list(finalized)):
        start = max(invoice.period_start, account_for(tenant).starts_at)
        billed = _billed(tenant, invoice.period_start)
        missing: dict[datetime, dict[str, int]] = {}
        positions: dict[str, int] = defaultdict(int)
        for per_meter in billed.values():
            for meter, qty in per_meter.items():
                positions[meter] += qty
        for seg in rating.segments(tenant, start, invoice.period_end):
            now_sums = rating.usage_sums(tenant, seg.start, seg.end)
            diff = {m: q - billed.get(seg.start, {}).get(m, 0) for m, q in now_sums.items()}
            missing[seg.start] = {m: q for m, q in diff.items() if q}
        if any(missing.values()):
            lines += rating.rate(tenant, start, invoice.period_end, start_positions=positions, quantities=missing,
                                 late_of=invoice.period_start)
    return lines


# --- drafts and closing ---------------------------------------------------------------------------------

def _rate_invoice(tenant: Tenant, account: BillingAccount, start: datetime, end: datetime) -> list[rating.RatedLine]:
    own_start = max(start, account.starts_at)
    lines = rating.rate(tenant, own_start, end) if own_start < end else []
    return lines + late_lines(tenant, start)


def _currency(tenant: Tenant, lines: list[rating.RatedLine], end: datetime) -> str:
    currencies = {line.book.currency for line in lines}
    if len(currencies) > 1:
        raise Conflict(f"usage of tenant {tenant.slug} is priced in several currencies: {sorted(currencies)}")
    if currencies:
        return currencies.pop()
    book = PriceBook.objects.filter(plan_id=tenant.plan_id, effective_from__lt=end).order_by("-effective_from").first()
    return book.currency if book else settings.BILLING_DEFAULT_CURRENCY


def _write(invoice: Invoice, lines: list[rating.RatedLine]) -> None:
    """Replace a draft's lines (the caller holds the account's lock)."""
    InvoiceLine.objects.filter(invoice=invoice).delete()
    InvoiceLine.objects.bulk_create([
        InvoiceLine(invoice=invoice, position=i, meter=ln.meter, description=ln.description[:300], band=ln.band,
                    quantity=ln.quantity, unit_label=ln.unit_label, scale=ln.scale, unit_price=ln.unit_price,
                    amount=ln.amount, segment_start=ln.segment_start, segment_end=ln.segment_end, price_book=ln.book,
                    late_period_start=ln.late_period_start)
        for i, ln in enumerate(lines, start=1)])
    invoice.total = rating.total(lines)
    late = sorted({ln.late_period_start for ln in lines if ln.late_period_start is not None})
    invoice.notes = "".join(
        f"Includes usage of the period from {p:%Y-%m-%d} recorded after that period's invoice was finalized.\n"
        for p in late)


def _locked_account(tenant: Tenant) -> BillingAccount:
    account = account_for(tenant)
    return BillingAccount.objects.for_tenant(tenant).select_for_update().get(pk=account.pk)


def refresh_draft(tenant: Tenant, at: datetime | None = None) -> Invoice | None:
    """Re-rate the draft of the period containing ``at`` (default now); None if that period is finalized."""
    at = at or timezone.now()
    with transaction.atomic():
        account = _locked_account(tenant)
        start, end = period_containing(account, at)
        invoice = Invoice.objects.for_tenant(tenant).filter(period_start=start).first()
        if invoice is not None and invoice.status == Invoice.Status.FINALIZED:
            return None
        lines = _rate_invoice(tenant, account, start, end)
        if invoice is None:
            invoice = Invoice(tenant=tenant, period_start=start, period_end=end)
        invoice.currency = _currency(tenant, lines, end)
        invoice.updated_at = timezone.now()
        invoice.save()
        _write(invoice, lines)
        invoice.save(update_fields=["total", "notes"])
        return invoice


def close_period(tenant: Tenant, period_start: datetime, now: datetime | None = None) -> Invoice:
    """Finalize the period starting at ``period_start`` (it must be past its grace). Idempotent."""
    now = now or timezone.now()
    with transaction.atomic():
        account = _locked_account(tenant)
        start, end = period_containing(account, period_start)
        if start != period_start:
            raise BadRequest(f"{period_start.isoformat()} is not the start of a billing period")
        if end + grace() > now:
            raise Conflict(f"the period from {start:%Y-%m-%d} is still open or in its grace period")
        invoice = Invoice.objects.for_tenant(tenant).filter(period_start=start).first()
        if invoice is not None and invoice.status == Invoice.Status.FINALIZED:
            return invoice  # closed before (by this job's previous run, or another worker)
        lines = _rate_invoice(tenant, account, start, end)
        if invoice is None:
            invoice = Invoice(tenant=tenant, period_start=start, period_end=end)
            invoice.save()
        _write(invoice, lines)
        invoice.currency = _currency(tenant, lines, end)
        invoice.number = next_number("invoice")
        invoice.status = Invoice.Status.FINALIZED
        invoice.finalized_at = invoice.updated_at = now
        invoice.save()
        # Outbox: the delivery rows commit with the invoice.
        webhooks.emit("invoice.finalized", tenant, {"invoice": invoice_summary(invoice)},
                      event_id=f"invoice.finalized:{invoice.number}")
        log.info("invoice %s finalized for %s: %s %s", invoice.number, tenant.slug, invoice.total, invoice.currency)
        return invoice


def due_periods(tenant: Tenant, now: datetime | None = None) -> list[datetime]:
    """Starts of the tenant's periods past their grace and not yet finalized, oldest first."""
    now = now or timezone.now()
    account = account_for(tenant)
    last = (Invoice.objects.for_tenant(tenant).filter(status=Invoice.Status.FINALIZED)
            .order_by("-period_start").first())
    start, end = next_period(account, last.period_start) if last else period_containing(account, account.starts_at)
    due = []
    while end + grace() <= now and len(due) < MAX_CLOSE_PER_RUN:
        due.append(start)
        start, end = next_period(account, start)
    return due


def close_due(now: datetime | None = None) -> list[Invoice]:
    """Close every billable tenant's periods that are past their grace (the beat job). A tenant that cannot be
    closed (e.g. usage priced in two currencies) is logged and left for the next run; the others go on."""
    closed = []
    for tenant in Tenant.objects.select_related("plan").order_by("pk"):
        if not is_billable(tenant):
            continue
        try:
            for start in due_periods(tenant, now):
                closed.append(close_period(tenant, start, now))
        except Exception:
            log.exception("could not close the billing periods of tenant %s", tenant.slug)
    return closed


def refresh_drafts(now: datetime | None = None) -> int:
    """Refresh the current draft of every billable tenant, and drafts still in grace (the beat job)."""
    now = now or timezone.now()
    count = 0
    for tenant in Tenant.objects.select_related("plan").order_by("pk"):
        if not is_billable(tenant):
            continue
        try:
            account = account_for(tenant)
            previous = period_containing(account, period_containing(account, now)[0] - timedelta(seconds=1))
            if previous[1] + grace() > now and previous[0] >= period_containing(account, account.starts_at)[0]:
                count += refresh_draft(tenant, previous[0]) is not None
            count += refresh_draft(tenant, now) is not None
        except Exception:
            log.exception("could not refresh the draft invoice of tenant %s", tenant.slug)
    return count


# --- credit notes ----------------------------------------------------------------------------------------

def issue_credit_note(invoice: Invoice, reason: str, lines: list[tuple[str, Decimal]]) -> CreditNote:
    """Credit part of a finalized invoice: the invoice stays as it was; the credit note is numbered gap-free.

    ``lines``: (description, positive amount in the invoice's currency, cents). The credits of an invoice can
    never exceed its total."""
    if not reason.strip():
        raise BadRequest("a credit note needs a reason")
    if not lines:
        raise BadRequest("a credit note needs at least one line")
    amounts = []
    for description, amount in lines:
        amount = Decimal(amount)
        if amount <= 0 or amount != rating.round_money(amount):
            raise BadRequest("credit note amounts are positive and in cents", details={"amount": str(amount)})
        if not description.strip():
            raise BadRequest("every credit note line needs a description")
        amounts.append(amount)
    with transaction.atomic():
        _locked_account(invoice.tenant)
        invoice = Invoice.objects.for_tenant(invoice.tenant).get(pk=invoice.pk)
        if invoice.status != Invoice.Status.FINALIZED:
            raise Conflict("only a finalized invoice can be credited (a draft is simply re-rated)")
        total = sum(amounts, Decimal("0.00"))
        if invoice.credited + total > invoice.total:
            raise Conflict("credits would exceed the invoice total",
                           details={"invoice_total": str(invoice.total), "credited": str(invoice.credited),
                                    "requested": str(total)})
        note = CreditNote(invoice=invoice, tenant=invoice.tenant, number=next_number("credit_note"),
                          reason=reason.strip(), currency=invoice.currency, total=total, status="draft")
        note.save()
        for (description, _), amount in zip(lines, amounts, strict=True):
            CreditNoteLine.objects.create(credit_note=note, description=description.strip()[:300], amount=amount)
        note.status = CreditNote.FINAL_STATUS
        note.save()
        webhooks.emit("credit_note.issued", invoice.tenant,
                      {"credit_note": {"number": note.number, "invoice": invoice.number, "total": str(total),
                                       "currency": note.currency, "reason": note.reason}},
                      event_id=f"credit_note.issued:{note.number}")
        return note


def invoice_summary(invoice: Invoice) -> dict:
    return {"id": invoice.pk, "number": invoice.number, "tenant": invoice.tenant.slug, "status": invoice.status,
            "period_start": invoice.period_start.isoformat(), "period_end": invoice.period_end.isoformat(),
            "currency": invoice.currency, "total": str(invoice.total)}
