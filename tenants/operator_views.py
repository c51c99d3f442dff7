"""Operator (cloud admin) pages: tenants, plans and quotas, the audit log; and the tenants' own audit page.

Staff only (``staff_member_required``); ``portal.middleware.RequireStaffMFAMiddleware`` sends staff without TOTP
to enrolment first, so these pages are only ever reached with a second factor. Every change goes through
``tenants.services`` (which writes the audit log), exactly as the API does.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from portal.errors import ApiError, BadRequest
from portal.health import readiness

from . import audit, quota, services
from .meters import QUOTA_KEYS, UNLIMITED
from .models import MANAGING_ROLES, AuditEvent, Membership, Plan, Role, Tenant
from .tenancy import web_tenant

operator_required = staff_member_required(login_url="account_login")
AUDIT_PAGE_ROWS = 200


def _limit(raw: str, key: str) -> int | None:
    """A limit typed in a form: blank = not set (None), ``-1`` or ``unlimited`` = unlimited."""
    raw = raw.strip().replace("_", "").replace(",", "")
    if not raw:
        return None
    if raw.lower() in ("unlimited", "∞"):
        return UNLIMITED
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{key}: the limit must be a whole number, -1 or 'unlimited' (got {raw!r})") from None
    if value < UNLIMITED:
        raise BadRequest(f"{key}: the limit must be -1 (unlimited) or a non-negative number")
    return value


def _limits_from(post, prefix: str) -> dict[str, int]:
    limits = {}
    for key in QUOTA_KEYS:
        value = _limit(post.get(f"{prefix}{key}", ""), key)
        if value is not None:
            limits[key] = value
    return limits


@operator_required
@require_http_methods(["GET", "POST"])
def tenants_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            plan = Plan.objects.filter(slug=request.POST.get("plan", "")).first()
            name, slug = request.POST.get("name", "").strip(), request.POST.get("slug", "").strip()
            if not (name and slug and plan):
                raise BadRequest("a new tenant needs a name, a slug and a plan")
            tenant = services.create_tenant(name, slug, plan)
            messages.success(request, f"Tenant {tenant.slug} created.")
            return redirect("operator-tenant", slug=tenant.slug)
        except ApiError as exc:
            messages.error(request, exc.message)
    rows = []
    for tenant in Tenant.objects.select_related("plan").order_by("name"):
        states = {s.quota_key: s for s in quota.quota_states(tenant)}
        rows.append({"tenant": tenant, "key_bits": states.get("qkd_key_bits.month"),
                     "entropy": states.get("entropy_bytes.month")})
    _ok, health = readiness()  # which dependency is down, for operators
    return render(request, "tenants/operator_tenants.html",
                  {"rows": rows, "health": health, "plans": Plan.objects.all()})


@operator_required
@require_http_methods(["GET", "POST"])
def tenant_page(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant.objects.select_related("plan"), slug=slug)
    if request.method == "POST":
        what = request.POST.get("action", "")
        try:
            if what == "suspend":
                services.set_status(tenant, Tenant.Status.SUSPENDED)
                messages.success(request, f"{tenant.slug} suspended: its tokens and certificates are refused now.")
            elif what == "resume":
                services.set_status(tenant, Tenant.Status.ACTIVE)
                messages.success(request, f"{tenant.slug} resumed.")
            elif what == "plan":
                plan = Plan.objects.filter(slug=request.POST.get("plan", "")).first()
                if plan is None:
                    raise BadRequest("choose a plan")
                services.update_tenant(tenant, plan=plan, name=request.POST.get("name", "").strip() or None)
                messages.success(request, f"{tenant.slug} is on the {plan.name} plan.")
            elif what == "overrides":
                services.set_quota_overrides(tenant, _limits_from(request.POST, "override-"))
                messages.success(request, "Quota overrides saved.")
            elif what in ("role", "remove"):
                membership = Membership.objects.for_tenant(tenant).select_related("user").filter(
                    pk=request.POST.get("membership") or 0).first()
                if membership is None:
                    raise BadRequest("no such member")
                if what == "role":
                    services.change_role(membership, request.POST.get("role", ""), acting_role=None)
                    messages.success(request, f"{membership.user.username} is now {membership.role}.")
                else:
                    services.remove_member(membership, acting_role=None)
                    messages.success(request, f"{membership.user.username} removed.")
            else:
                raise BadRequest(f"unknown action {what!r}")
            return redirect("operator-tenant", slug=tenant.slug)
        except ApiError as exc:
            messages.error(request, exc.message)
        tenant.refresh_from_db()
    overrides = services.quota_overrides(tenant)
    plan_limits = tenant.plan.limits()
    limits = [{"key": k, "plan": plan_limits.get(k, 0), "override": overrides.get(k)} for k in QUOTA_KEYS]
    return render(request, "tenants/operator_tenant.html", {
        "tenant": tenant, "limits": limits, "plans": Plan.objects.all(), "states": quota.quota_states(tenant),
        "members": Membership.objects.for_tenant(tenant).select_related("user"),
        "roles": Role.choices, "events": AuditEvent.objects.for_tenant(tenant).select_related("tenant")[:20],
    })


@operator_required
@require_http_methods(["GET", "POST"])
def plans_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            if request.POST.get("plan"):
                plan = get_object_or_404(Plan, slug=request.POST["plan"])
                services.set_plan_limits(plan, _limits_from(request.POST, f"{plan.slug}-"))
                messages.success(request, f"Limits of {plan.name} saved.")
            else:
                name, slug = request.POST.get("name", "").strip(), request.POST.get("slug", "").strip()
                if not (name and slug):
                    raise BadRequest("a new plan needs a name and a slug")
                plan = services.create_plan(name, slug, _limits_from(request.POST, "new-"))
                messages.success(request, f"Plan {plan.name} created.")
            return redirect("operator-plans")
        except ApiError as exc:
            messages.error(request, exc.message)
    plans = [{"plan": p, "limits": p.limits(), "tenants": p.tenants.count()}
             for p in Plan.objects.prefetch_related("quotas")]
    for entry in plans:
        entry["rows"] = [(k, entry["limits"].get(k, 0)) for k in QUOTA_KEYS]
    return render(request, "tenants/operator_plans.html", {"plans": plans, "quota_keys": QUOTA_KEYS})


def _audit_response(request: HttpRequest, tenant: Tenant | None, template: str, export_name: str,
                    extra: dict) -> HttpResponse:
    try:
        events = audit.filtered(request.GET, tenant=tenant)
    except ApiError as exc:
        messages.error(request, exc.message)
        events = audit.filtered({}, tenant=tenant)
    if request.GET.get("format") == "csv":
        response = StreamingHttpResponse(audit.csv_lines(events.order_by("created_at", "id").iterator()),
                                         content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{export_name}"'
        return response
    query = request.GET.copy()
    query["format"] = "csv"
    actions = sorted(set(AuditEvent.objects.unscoped().values_list("action", flat=True).distinct())
                     if tenant is None else
                     AuditEvent.objects.for_tenant(tenant).values_list("action", flat=True).distinct())
    return render(request, template, {"events": events[:AUDIT_PAGE_ROWS], "filters": request.GET,
                                      "csv_url": f"{request.path}?{query.urlencode()}", "actions": actions,
                                      "limit": AUDIT_PAGE_ROWS, **extra})


@operator_required
def audit_page(request: HttpRequest) -> HttpResponse:
    return _audit_response(request, None, "tenants/operator_audit.html", "audit.csv",
                           {"tenants": Tenant.objects.order_by("slug")})


@login_required
def tenant_audit_page(request: HttpRequest) -> HttpResponse:
    """The tenant's own audit log (owners and admins; operators see it on the operator pages)."""
    ctx = web_tenant(request)
    if ctx is None or (ctx.role not in MANAGING_ROLES and not request.user.is_staff):
        messages.error(request, "The audit log is for the tenant's owners and admins.")
        return redirect("dashboard")
    return _audit_response(request, ctx.tenant, "tenants/audit.html", f"audit-{ctx.tenant.slug}.csv",
                           {"tenant_context": ctx, "page_url": reverse("audit")})
