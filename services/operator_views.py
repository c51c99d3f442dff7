"""Network operations for operators: the network with operator detail (KME endpoints, node gateways), alarms,
and on the embedded twin the controls to cut/restore a link and to add/clear an eavesdropper.

The page redraws itself every 2 s from ``network/live/`` (an HTML fragment, the frame's ``data-live``), so a
cut link is seen drawn down without a reload; the picture is the researchers' one (``services.netpicture``).
Staff only; the MFA middleware keeps staff without TOTP out.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from portal.errors import ApiError

from . import netpicture, network

operator_required = staff_member_required(login_url="account_login")


def operator_network() -> dict:
    """The network with operator detail, drawn as the researchers' picture, with alarms and node gateways."""
    try:
        view = network.network_view(include_internal=True)
    except ApiError as exc:
        view = {"nodes": [], "links": [], "telemetry": False, "simulated": False, "error": exc.message}
    gateways = network.gateway_status()
    for node in view["nodes"]:
        node["gateways"] = {**gateways.get("*", {}), **gateways.get(node["id"], {})}
    for link in view["links"]:
        qber = link.get("qber")
        link["qber_percent"] = 100 * qber if isinstance(qber, int | float) else None
        cap = link.get("key_store_capacity_bits") or 0
        link["fill_percent"] = round(100 * (link.get("key_store_fill_bits") or 0) / cap) if cap else None
        protocol = link.get("protocol") or {}
        link["attack_active"] = bool(isinstance(protocol, dict) and protocol.get("attack_active"))
    return {"network": view, "alarms": network.network_alarms(view), "picture": netpicture.draw(view)}


@operator_required
def network_page(request: HttpRequest) -> HttpResponse:
    return render(request, "services/operator_network.html", operator_network())


@operator_required
def network_live(request: HttpRequest) -> HttpResponse:
    """The drawing, links and alarms as a fragment the page polls."""
    response = render(request, "services/_operator_network_live.html", operator_network())
    response["Cache-Control"] = "no-store"
    return response


@operator_required
@require_POST
def link_action(request: HttpRequest, link_id: str) -> HttpResponse:
    action = request.POST.get("action", "")
    try:
        after = network.twin_admin(link_id, action)
        messages.success(request, f"{link_id}: {action} done (link {after.get('state', '?')}).")
    except ApiError as exc:
        messages.error(request, exc.message)
    return redirect("operator-network")
