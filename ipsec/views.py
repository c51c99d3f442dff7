"""The "Tunnels" page: the tenant's tunnels (state, counters, re-key history with key IDs), a probe button and
the curl commands."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from portal.errors import ApiError
from tenants.models import WRITING_ROLES
from tenants.tenancy import web_tenant

from . import services
from .models import IpsecGateway, Tunnel


@login_required
@require_http_methods(["GET", "POST"])
def tunnels_page(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    if request.method == "POST" and ctx is not None:
        try:
            if ctx.role not in WRITING_ROLES and not request.user.is_staff:
                raise ApiError("your role cannot probe or close tunnels")
            tunnel = Tunnel.objects.for_tenant(ctx.tenant).get(uuid=request.POST.get("tunnel"))
            if request.POST.get("action") == "close":
                services.request_close(tunnel)
                messages.success(request, "Closing the tunnel.")
            else:
                figures = services.probe(tunnel)
                messages.success(request, f"Probe: {figures['sent'] - figures['lost']}/{figures['sent']} replies, "
                                          f"RTT p50 {figures['rtt_p50_ms']} ms.")
        except (Tunnel.DoesNotExist, ValueError):
            messages.error(request, "no such tunnel")
        except ApiError as exc:
            messages.error(request, exc.message)
        return redirect("tunnels")
    tunnels = [] if ctx is None else list(
        Tunnel.objects.for_tenant(ctx.tenant).order_by("-created_at").prefetch_related("key_events")[:50])
    return render(request, "ipsec/tunnels.html", {
        "tenant_context": ctx, "tunnels": tunnels, "unavailable": services.unavailable_reason(),
        "gateways": IpsecGateway.objects.filter(enabled=True), "proposals": services.ESP_PROPOSALS,
        "base_url": request.build_absolute_uri("/api/").rstrip("/"),
    })


@login_required
def live_fragment(request: HttpRequest) -> HttpResponse:
    """The tenant's live tunnels (the dashboard's "live services", refreshed in place)."""
    ctx = web_tenant(request)
    live = [] if ctx is None else list(Tunnel.objects.for_tenant(ctx.tenant).filter(
        state__in=Tunnel.live_states).order_by("-created_at")[:20])
    return render(request, "ipsec/_live.html", {"tunnels": live})
