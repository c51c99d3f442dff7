"""The tenant's web pages: dashboard (quotas), API tokens, usage ledger (operator pages: ``operator_views``)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from portal.errors import ApiError

from . import quota, tokens
from .models import ApiToken, Membership, Scope, UsageRecord
from .tenancy import web_tenant


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    context = {"tenant_context": ctx, "memberships": Membership.objects.unscoped().select_related("tenant").filter(
        user=request.user)}
    if ctx is not None:
        states = quota.quota_states(ctx.tenant)
        context["quotas"] = [
            {"state": s, "percent": 0 if s.unlimited or s.limit == 0 else min(100, round(100 * s.used / s.limit))}
            for s in states
        ]
    return render(request, "tenants/dashboard.html", context)


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


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    if ctx is None:
        return redirect("dashboard")
    records = UsageRecord.objects.for_tenant(ctx.tenant)[:200]
    return render(request, "tenants/usage.html", {"tenant_context": ctx, "records": records})
