"""The web shell (dashboard, tokens, operator pages) and the health endpoints."""

from __future__ import annotations

import hmac
import sys

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views import defaults
from django.views.decorators.http import require_GET, require_http_methods
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse

from portal import errors
from portal.errors import ApiError
from tenants import quota, tokens
from tenants.models import ApiToken, Membership, Scope, Tenant
from tenants.tenancy import resolve_tenant

from .health import readiness


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def sees_health_detail(request: HttpRequest) -> bool:
    """Operators see which dependency is down: the health token (``HEALTH_TOKEN``; ``var/health-token`` under
    ``make run``), which works while the database is down, or a staff session (which needs the database)."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and settings.HEALTH_TOKEN:
        return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), settings.HEALTH_TOKEN.encode())
    try:
        return bool(request.user.is_authenticated and request.user.is_staff)
    except Exception:  # the session store (database) is down: anonymous, never an error page
        return False


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ok", "code": "ready"}`` or 503 ``{"status": "unavailable", "code": "not_ready"}``;
    operators also get ``checks``: each dependency's state and, while down, its error."""
    ok, checks = readiness()
    body: dict = {"status": "ok" if ok else "unavailable", "code": "ready" if ok else "not_ready"}
    if sees_health_detail(request):
        body["checks"] = checks
    response = JsonResponse(body, status=200 if ok else 503)
    response["Cache-Control"] = "no-store"
    return response


ETSI_PREFIXES = ("/api/v1/keys/", "/api/etsi004/")


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a dependency that is away (PostgreSQL, Redis, the broker) is a 503 in the API's error shape
    (the ETSI shape on ETSI paths) with Retry-After, on any path; anything else is Django's plain 500."""
    unavailable = errors.dependency_unavailable(sys.exc_info()[1]) if sys.exc_info()[1] else None
    if unavailable is None:
        return defaults.server_error(request)
    if request.path.startswith(ETSI_PREFIXES):
        status, body, headers = errors.describe_etsi(unavailable)
    else:
        status, code, message, details, headers = errors.describe(unavailable)
        body = errors.error_body(code, message, details)
    return JsonResponse(body, status=status, headers=headers)


@extend_schema(summary="API root: links to every collection", responses={200: dict})
@api_view(["GET"])
@permission_classes([AllowAny])
def api_root(request, format=None) -> Response:
    links = {name: reverse(name, request=request) for name in ("me", "quotas", "tenant-list", "plan-list",
                                                                  "member-list", "token-list", "usage-list")}
    links.update(schema=reverse("schema", request=request), docs=reverse("swagger-ui", request=request))
    return Response(links)


def _web_tenant(request: HttpRequest):
    """The tenant the browser is looking at (``?tenant=`` switches and is remembered in the session)."""
    if request.GET.get("tenant"):
        request.session["tenant"] = request.GET["tenant"]
    request.auth = None
    try:
        return resolve_tenant(request)
    except ApiError as exc:
        if request.GET.get("tenant"):
            messages.error(request, exc.message)
        request.session.pop("tenant", None)
        first = Membership.objects.unscoped().select_related("tenant").filter(user=request.user).first()
        if first is None:
            return None
        request.session["tenant"] = first.tenant.slug
        return resolve_tenant(request, slug=first.tenant.slug)


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    ctx = _web_tenant(request)
    context = {"tenant_context": ctx, "memberships": Membership.objects.unscoped().select_related("tenant").filter(
        user=request.user)}
    if ctx is not None:
        states = quota.quota_states(ctx.tenant)
        context["quotas"] = [
            {"state": s, "percent": 0 if s.unlimited or s.limit == 0 else min(100, round(100 * s.used / s.limit))}
            for s in states
        ]
    return render(request, "portal/dashboard.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def token_page(request: HttpRequest) -> HttpResponse:
    ctx = _web_tenant(request)
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
    response = render(request, "portal/tokens.html", {
        "tenant_context": ctx, "tokens": listed, "created": created,
        "scopes": [(s.value, s.label) for s in Scope if s.value in tokens.allowed_scopes(request.user, ctx.tenant)],
    })
    response["Cache-Control"] = "no-store"  # the page may hold a freshly created secret
    return response


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    ctx = _web_tenant(request)
    if ctx is None:
        return redirect("dashboard")
    from tenants.models import UsageRecord

    records = UsageRecord.objects.for_tenant(ctx.tenant)[:200]
    return render(request, "portal/usage.html", {"tenant_context": ctx, "records": records})


@login_required
@require_http_methods(["GET", "POST"])
def services_page(request: HttpRequest) -> HttpResponse:
    """The network (nodes, links, live state), the tenant's SAEs (register: bundle shown once), recent key IDs
    and key streams (metadata and counters only)."""
    from services import saes
    from services.models import KeyDelivery, KeyStream, QkdNode, Sae
    from services.network import network_view

    ctx = _web_tenant(request)
    bundle = None
    if request.method == "POST" and ctx is not None:
        try:
            # The scope the API's SaeViewSet writes with (resolve_tenant grants it to owner/admin/member/staff).
            if "keys:write" not in ctx.scopes:
                raise ApiError("your role cannot register SAEs")
            bundle = saes.register_sae(ctx.tenant, request.POST.get("name", "").strip(), request.POST.get("node", ""))
            messages.success(request, f"SAE {bundle.sae.name} registered.")
        except ApiError as exc:
            messages.error(request, exc.message)
    try:
        network = network_view(include_internal=request.user.is_staff)
        for link in network.get("links", []):
            link["qber_percent"] = 100 * link["qber"] if isinstance(link.get("qber"), (int, float)) else None
    except ApiError:
        network = {"nodes": [], "links": [], "telemetry": False}
    context = {"tenant_context": ctx, "network": network, "bundle": bundle,
               "nodes": QkdNode.objects.filter(enabled=True)}
    if ctx is not None:
        context["saes"] = Sae.objects.for_tenant(ctx.tenant).select_related("node")
        context["deliveries"] = KeyDelivery.objects.for_tenant(ctx.tenant).select_related(
            "master", "slave").order_by("-created_at")[:20]
        context["streams"] = KeyStream.objects.for_tenant(ctx.tenant).select_related(
            "source", "destination").order_by("-created_at")[:20]
    response = render(request, "portal/services.html", context)
    response["Cache-Control"] = "no-store"  # may hold a freshly issued private key
    return response


@staff_member_required(login_url="account_login")
def operator_tenants(request: HttpRequest) -> HttpResponse:
    rows = []
    for tenant in Tenant.objects.select_related("plan").order_by("name"):
        states = {s.quota_key: s for s in quota.quota_states(tenant)}
        rows.append({"tenant": tenant, "key_bits": states.get("qkd_key_bits.month"),
                     "entropy": states.get("entropy_bytes.month")})
    _ok, health = readiness()
    return render(request, "portal/operator_tenants.html", {"rows": rows, "health": health})
