"""Invoice exports: JSON (the API's shape), CSV (one row per line, then the total) and PDF (fpdf2).

Amounts are written as decimal strings, never floats. The PDF uses fpdf2's built-in Helvetica (Latin-1), so
currencies are written as their ISO codes.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from fpdf import FPDF

from .models import CreditNote, Invoice


def _money(value) -> str:
    return f"{value:.2f}"


def invoice_json(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.pk,
        "number": invoice.number,
        "status": invoice.status,
        "tenant": invoice.tenant.slug,
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "currency": invoice.currency,
        "total": _money(invoice.total),
        "credited": _money(invoice.credited),
        "finalized_at": invoice.finalized_at.isoformat() if invoice.finalized_at else None,
        "updated_at": invoice.updated_at.isoformat(),
        "notes": invoice.notes,
        "lines": [{
            "position": ln.position, "meter": ln.meter, "description": ln.description, "band": ln.band,
            "quantity": ln.quantity, "unit_label": ln.unit_label, "scale": ln.scale,
            "unit_price": str(ln.unit_price.normalize()), "amount": _money(ln.amount),
            "segment_start": ln.segment_start.isoformat(), "segment_end": ln.segment_end.isoformat(),
            "late_period_start": ln.late_period_start.isoformat() if ln.late_period_start else None,
        } for ln in invoice.lines.all()],
        "credit_notes": [{"number": c.number, "total": _money(c.total), "reason": c.reason}
                         for c in CreditNote.objects.for_tenant(invoice.tenant_id).filter(invoice=invoice)],
    }


def invoice_csv(invoice: Invoice) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["invoice", "position", "meter", "description", "band", "quantity", "unit_label", "scale",
                     "unit_price", "amount", "currency", "segment_start", "late_period_start"])
    label = invoice.number or f"draft-{invoice.pk}"
    for ln in invoice.lines.all():
        writer.writerow([label, ln.position, ln.meter, ln.description, ln.band, ln.quantity, ln.unit_label, ln.scale,
                         str(ln.unit_price.normalize()), _money(ln.amount), invoice.currency,
                         ln.segment_start.isoformat(),
                         ln.late_period_start.isoformat() if ln.late_period_start else ""])
    writer.writerow([label, "", "", "TOTAL", "", "", "", "", "", _money(invoice.total), invoice.currency, "", ""])
    return out.getvalue()


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def invoice_pdf(invoice: Invoice, operator: str = "QXaaS") -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_title(f"Invoice {invoice.number or 'draft'}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    title = f"Invoice {invoice.number}" if invoice.number else "Draft invoice (not final)"
    pdf.cell(0, 10, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for text in (f"Issued by: {operator}", f"Tenant: {invoice.tenant.name} ({invoice.tenant.slug})",
                 f"Period: {invoice.period_start:%Y-%m-%d %H:%M} to {invoice.period_end:%Y-%m-%d %H:%M} UTC",
                 f"Currency: {invoice.currency}", f"Status: {invoice.status}"):
        pdf.cell(0, 6, _latin1(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    widths = (88, 30, 30, 42)
    pdf.set_font("Helvetica", "B", 9)
    with pdf.table(col_widths=widths, text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT")) as table:
        table.row(["Description", "Quantity", "Unit price", f"Amount ({invoice.currency})"])
        pdf.set_font("Helvetica", size=8)
        for ln in invoice.lines.all():
            quantity = f"{ln.quantity / ln.scale:,.6f}".rstrip("0").rstrip(".") + f" {ln.unit_label}"
            table.row([_latin1(ln.description), quantity, str(ln.unit_price.normalize()), _money(ln.amount)])
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 8, f"Total: {_money(invoice.total)} {invoice.currency}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=8)
    for note in invoice.notes.splitlines():
        pdf.multi_cell(0, 5, _latin1(note), new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(0, 5, "Amounts are rounded per line to cents (half up); the total is the sum of the lines.",
                   new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
