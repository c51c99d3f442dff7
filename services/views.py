"""The "Services" web page: the QKD network, the tenant's SAEs, recent key deliveries and key streams."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from portal.errors import ApiError
from tenants.tenancy import web_tenant

from . import saes
from .models import KeyDelivery, KeyStream, QkdNode, Sae
from .network import network_view


@login_required
@require_http_methods(["GET", "POST"])
def services_page(request: HttpRequest) -> HttpResponse:
    """The network (nodes, links, live state), the tenant's SAEs (register: bundle shown once), recent key IDs
    and key streams (metadata and counters only)."""
    ctx = web_tenant(request)
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
    response = render(request, "services/services.html", context)
    response["Cache-Control"] = "no-store"  # may hold a freshly issued private key
    return response
