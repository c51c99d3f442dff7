"""Network operations for operators: the network with operator detail (KME endpoints, node gateways), alarms,
and on the embedded twin the controls to cut/restore a link and to add/clear an eavesdropper.

The page redraws itself every few seconds from ``network/live/`` (an HTML fragment), so a cut link is seen
drawn down without a reload. Staff only; the MFA middleware keeps staff without TOTP out.
"""

from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from portal.errors import ApiError

from . import network

operator_required = staff_member_required(login_url="account_login")
WIDTH, HEIGHT, MARGIN = 640, 380, 70
STATE_COLOURS = {"up": "#2b8a3e", "cut": "#c92a2a", "down": "#c92a2a"}


def _layout(nodes: list[dict]) -> dict[str, tuple[float, float]]:
    """Nodes on an ellipse, in registry order: stable between refreshes, readable for the few nodes a QKD
    network has."""
    count = max(len(nodes), 1)
    rx, ry = WIDTH / 2 - MARGIN, HEIGHT / 2 - MARGIN / 1.5
    return {n["id"]: (WIDTH / 2 + rx * math.cos(2 * math.pi * i / count - math.pi / 2),
                      HEIGHT / 2 + ry * math.sin(2 * math.pi * i / count - math.pi / 2))
            for i, n in enumerate(nodes)}


def operator_network() -> dict:
    """The network with operator detail, its alarms, node gateways and the drawing's coordinates."""
    try:
        view = network.network_view(include_internal=True)
    except ApiError as exc:
        view = {"nodes": [], "links": [], "telemetry": False, "simulated": False, "error": exc.message}
    gateways = network.gateway_status()
    positions = _layout(view["nodes"])
    for node in view["nodes"]:
        node["x"], node["y"] = positions[node["id"]]
        node["gateways"] = {**gateways.get("*", {}), **gateways.get(node["id"], {})}
    for link in view["links"]:
        ends = [positions.get(e) for e in link.get("endpoints") or []]
        if len(ends) == 2 and None not in ends:
            (link["x1"], link["y1"]), (link["x2"], link["y2"]) = ends
            link["mx"], link["my"] = (ends[0][0] + ends[1][0]) / 2, (ends[0][1] + ends[1][1]) / 2
        link["colour"] = STATE_COLOURS.get(link.get("state"), "#e67700")
        qber = link.get("qber")
        link["qber_percent"] = 100 * qber if isinstance(qber, int | float) else None
        protocol = link.get("protocol") or {}
        link["attack_active"] = bool(isinstance(protocol, dict) and protocol.get("attack_active"))
        if link["attack_active"]:
            link["colour"] = "#e67700"
    return {"network": view, "alarms": network.network_alarms(view), "width": WIDTH, "height": HEIGHT}


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
