"""The tenant's web pages: dashboard (quotas, usage charts, live services), API tokens, usage ledger with
filters and charts, invitations (operator pages: ``operator_views``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from portal.errors import ApiError

from . import charts, quota, services, tokens, usage
from .meters import METERS
from .models import ApiToken, Membership, Scope, Tenant, UsageRecord
from .tenancy import web_tenant


def _usage_context(tenant: Tenant, period: str) -> dict:
    """Quota bars and the usage charts of ``period`` (the dashboard and its live fragment)."""
    states = quota.quota_states(tenant)
    quotas = [{"state": s, "percent": 0 if s.unlimited or s.limit == 0 else min(100, round(100 * s.used / s.limit))}
              for s in states]
    period = period if period in usage.PERIODS else "day"
    chart_list = [{**c, "svg": charts.bar_chart(c["points"], title=f"{c['label']} per "
                                                f"{usage.PERIODS[period][1]}", unit=c["unit"])}
                  for c in usage.period_charts(tenant, period)]
    return {"quotas": quotas, "charts": chart_list, "period": period, "periods": list(usage.PERIODS)}


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    context = {"tenant_context": ctx, "memberships": Membership.objects.unscoped().select_related("tenant").filter(
        user=request.user)}
    if ctx is not None:
        context.update(_usage_context(ctx.tenant, request.GET.get("period", "day")))
    return render(request, "tenants/dashboard.html", context)


@login_required
def dashboard_usage_fragment(request: HttpRequest) -> HttpResponse:
    """The dashboard's quota bars and charts alone, refreshed in place by the page."""
    ctx = web_tenant(request)
    if ctx is None:
        return HttpResponse("", status=204)
    return render(request, "tenants/_usage.html", {"tenant_context": ctx,
                                                   **_usage_context(ctx.tenant, request.GET.get("period", "day"))})


@login_required
@require_http_methods(["GET", "POST"])
def token_page(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    if ctx is None:
        messages.error(request, "You are not a member of any tenant yet.")
        return redirect("dashboard")
    created = None
    if request.method == "POST":
        try:
            if request.POST.get("revoke"):
                token = ApiToken.objects.for_tenant(ctx.tenant).get(pk=int(request.POST["revoke"]))
                if not tokens.can_manage_token(request.user, token, ctx.role):
                    raise ApiError("you cannot revoke this token")
                tokens.revoke_token(token)
                messages.success(request, f"Token {token.prefix} revoked.")
            else:
                _, created = tokens.issue_token(
                    request.user, ctx.tenant, request.POST.get("name", "").strip() or "unnamed",
                    request.POST.getlist("scopes"),
                )
        except (ApiError, ApiToken.DoesNotExist, ValueError) as exc:
            messages.error(request, getattr(exc, "message", None) or "No such token.")
    listed = ApiToken.objects.for_tenant(ctx.tenant).select_related("user")
    if ctx.role not in ("owner", "admin") and not request.user.is_staff:
        listed = listed.filter(user=request.user)
    response = render(request, "tenants/tokens.html", {
        "tenant_context": ctx, "tokens": listed, "created": created,
        "scopes": [(s.value, s.label) for s in Scope if s.value in tokens.allowed_scopes(request.user, ctx.tenant)],
    })
    response["Cache-Control"] = "no-store"  # the page may hold a freshly created secret
    return response


def _day(value: str, field: str, errors: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
    except ValueError:
        errors.append(f"{field} must be a date like 2026-11-01")
        return None


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    """The ledger with filters (meter, from, to), a chart of the filtered usage and a CSV export of it."""
    ctx = web_tenant(request)
    if ctx is None:
        return redirect("dashboard")
    errors: list[str] = []
    meter = request.GET.get("meter", "")
    if meter and meter not in METERS:
        errors.append(f"unknown meter {meter!r}")
        meter = ""
    since = _day(request.GET.get("since", ""), "From", errors)
    until = _day(request.GET.get("until", ""), "To", errors)
    until_exclusive = until + timedelta(days=1) if until else None
    records = UsageRecord.objects.for_tenant(ctx.tenant)
    if meter:
        records = records.filter(meter=meter)
    if since:
        records = records.filter(created_at__gte=since)
    if until_exclusive:
        records = records.filter(created_at__lt=until_exclusive)
    now = timezone.now()
    end = min(until_exclusive, now) if until_exclusive else now
    start = since or end - timedelta(days=30)
    step = "hour" if end - start <= timedelta(days=2) else "day"
    chart = None
    if meter and start < end:
        points = usage.series(ctx.tenant, meter, start, end, step)
        chart = charts.bar_chart([(usage.label(at, step), v) for at, v in points],
                                 title=f"{METERS[meter].label} per {step}", unit=METERS[meter].unit + "s")
    export = {"meter": meter, "since": since.isoformat() if since else "",
              "until": until_exclusive.isoformat() if until_exclusive else ""}
    export_query = urlencode({"tenant": ctx.tenant.slug, **{k: v for k, v in export.items() if v}})
    for error in errors:
        messages.error(request, error)
    return render(request, "tenants/usage.html", {
        "tenant_context": ctx, "records": records[:200], "count": records.count(), "meters": METERS.values(),
        "meter": meter, "since": request.GET.get("since", ""), "until": request.GET.get("until", ""),
        "chart": chart, "export_query": export_query})


@login_required
@require_http_methods(["GET", "POST"])
def invitations_page(request: HttpRequest) -> HttpResponse:
    """The signed-in user's invitations to join tenants: accept or decline."""
    if request.method == "POST":
        accept = "accept" in request.POST
        try:
            pk = int(request.POST.get("accept") or request.POST.get("decline") or "")
            invitation = services.respond_to_invitation(pk, request.user, accept=accept)
        except ValueError:
            messages.error(request, "no invitation chosen")
        except ApiError as exc:
            messages.error(request, exc.message)
        else:
            verb = "joined" if accept else "declined the invitation to"
            messages.success(request, f"You {verb} {invitation.tenant.name}.")
        return redirect("invitations")
    return render(request, "tenants/invitations.html", {"invitations": services.pending_invitations(request.user)})
