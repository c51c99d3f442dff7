"""Billing pages: the tenant's draft (running total) and invoices; the operator's drafts and cost report."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from portal.errors import ApiError
from tenants.tenancy import web_tenant

from . import costs, invoices
from .charts import bar_chart
from .models import CreditNote, Invoice


@login_required
def tenant_billing(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    if ctx is None:
        return redirect("dashboard")
    if "billing:read" not in ctx.scopes:
        return render(request, "billing/tenant.html", {"tenant_context": ctx, "forbidden": True}, status=403)
    draft = invoices.refresh_draft(ctx.tenant) if invoices.is_billable(ctx.tenant) else None
    history = Invoice.objects.for_tenant(ctx.tenant).exclude(pk=getattr(draft, "pk", None))[:36]
    notes = CreditNote.objects.for_tenant(ctx.tenant).select_related("invoice")[:36]
    return render(request, "billing/tenant.html", {"tenant_context": ctx, "draft": draft, "invoices": history,
                                                   "credit_notes": notes})


@staff_member_required(login_url="account_login")
def operator_billing(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":  # "Refresh drafts now" (the beat job does it every 5 minutes)
        messages.success(request, f"{invoices.refresh_drafts()} drafts re-rated from the ledger.")
        return redirect("billing-operator")
    drafts = Invoice.objects.unscoped().filter(status=Invoice.Status.DRAFT).select_related("tenant")
    finalized = Invoice.objects.unscoped().filter(status=Invoice.Status.FINALIZED).select_related("tenant")[:50]
    start, end = costs.default_window(timezone.now())
    error, margin = None, Decimal("0.30")
    try:
        from .api.views import _parse_window

        start, end, margin = _parse_window(request.GET)
    except ApiError as exc:
        error = exc.message
    report = costs.cost_report(start, end)
    labels = [r.asset.asset_id for r in report.links]
    charts = []
    if labels:
        charts.append(bar_chart("Revenue vs depreciation + operating cost per link (EUR)", labels, {
            "revenue": [float(r.revenue) for r in report.links],
            "depreciation": [float(r.depreciation) for r in report.links],
            "operating": [float(r.operating) for r in report.links]}, "EUR"))
        charts.append(bar_chart("Cost per delivered Mbit of key per link (EUR)", labels, {
            "cost per Mbit": [float(r.cost_per_mbit or 0) for r in report.links]}, "EUR/Mbit"))
    if report.tenant_cost:
        tenants = sorted(report.tenant_cost)
        charts.append(bar_chart("Cost to serve each tenant's key bits (EUR)", tenants,
                                {"cost": [float(report.tenant_cost[t]) for t in tenants]}, "EUR"))
    rows = [{"r": r, "utilisation": report.utilisation(r)} for r in report.links]
    return render(request, "billing/operator.html", {
        "drafts": drafts, "finalized": finalized, "report": report, "rows": rows, "charts": charts,
        "margin": margin, "suggested": report.suggested_price_per_mbit(margin),
        "suggested_gb": report.suggested_price_per_gb(margin), "error": error,
        "draft_total": sum((d.total for d in drafts), Decimal("0.00"))})
