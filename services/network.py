"""The QKD network as operators and tenants see it: nodes, links and live link state.

Link telemetry (secret key rate, QBER, key-store fill, state) comes from KMEs that expose it (the twin's
``/api/v1/topology``, in the spirit of ETSI GS QKD 015's read-only view). KMEs without telemetry still appear as
nodes, with their reachability.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from portal.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable
from tenants import audit

from . import registry
from .models import QkdNode
from .sdqkd.client import KmeRejected, KmeUnavailable

LINK_FIELDS = ("id", "endpoints", "technology", "state", "secret_key_rate_bps", "qber", "key_store_fill_bits",
               "key_store_capacity_bits", "keys_consumed_bits", "loss_db", "mode",
               "protocol")  # per-block protocol telemetry (QBER by basis, f, aborts, attack in force)
log = logging.getLogger(__name__)


def network_view(include_internal: bool = False) -> dict[str, Any]:
    registry.ensure_twin_registered()
    nodes = list(QkdNode.objects.filter(enabled=True))
    telemetry: dict[str, Any] | None = None
    for node in nodes:
        try:
            telemetry = registry.client_for(node).topology()
            break
        except (KmeUnavailable, KmeRejected):
            continue
    live_nodes = {n["id"]: n for n in (telemetry or {}).get("nodes", [])}
    view_nodes = []
    for node in nodes:
        live = live_nodes.get(node.node_id)
        entry: dict[str, Any] = {"id": node.node_id, "site": node.site or (live or {}).get("site", ""),
                                 "source": node.source}
        if live:
            entry.update(keys_delivered=live.get("keys_delivered"), relay_hops=live.get("relay_hops"))
        if include_internal:
            entry.update(kme_url=node.kme_url, backend_sae_ids=node.backend_sae_ids, auth_mode=node.auth_mode)
        view_nodes.append(entry)
    links = [{k: link.get(k) for k in LINK_FIELDS if k in link} for link in (telemetry or {}).get("links", [])]
    return {
        "name": (telemetry or {}).get("name", "qkd-network"),
        "simulated": bool((telemetry or {}).get("simulated", False)),
        "telemetry": telemetry is not None,
        "nodes": view_nodes,
        "links": links,
    }


# -- node gateways (IPsec, TLS...): the apps above report their own, so this floor imports none of them --------
_gateway_reporters: dict[str, Callable[[], dict[str, str]]] = {}


def register_gateway_reporter(kind: str, report: Callable[[], dict[str, str]]) -> None:
    """``report()`` -> {node_id: status in words} for the ``kind`` of gateway an app runs at nodes (``ipsec``,
    ``tls``); shown on the operators' network page. Registered in the app's ``AppConfig.ready``."""
    _gateway_reporters[kind] = report


def gateway_status() -> dict[str, dict[str, str]]:
    """{node_id: {kind: status}} from every registered reporter; a reporter that fails says so, it does not
    break the page."""
    out: dict[str, dict[str, str]] = {}
    for kind, report in sorted(_gateway_reporters.items()):
        try:
            statuses = report()
        except Exception as exc:  # a reporter's bug must not hide the network from operators
            log.exception("gateway reporter %s failed", kind)
            statuses = {"*": f"status unknown ({type(exc).__name__})"}
        for node_id, status in statuses.items():
            out.setdefault(node_id, {})[kind] = status
    return out


# -- alarms and the twin's fault injection -------------------------------------------------------------------
QBER_ALARM = 0.11  # BB84's security threshold: above it no secret key can be distilled


def network_alarms(network: dict[str, Any]) -> list[dict[str, str]]:
    """Alarms an operator acts on, from the live telemetry: a link down or cut, a QBER above the threshold, an
    attack in force, a key store run dry, no telemetry at all."""
    alarms = []
    if not network.get("telemetry"):
        alarms.append({"severity": "critical", "object": "network",
                       "message": "no KME answered the telemetry request: the network's state is unknown"})
    for link in network.get("links", []):
        name = link.get("id", "?")
        if link.get("state") != "up":
            alarms.append({"severity": "critical", "object": f"link {name}", "message": f"link is {link.get('state')}"})
        qber = link.get("qber")
        if isinstance(qber, int | float) and qber > QBER_ALARM:
            alarms.append({"severity": "major", "object": f"link {name}",
                           "message": f"QBER {100 * qber:.1f} % above {100 * QBER_ALARM:.0f} %: "
                                      "eavesdropping or fault"})
        protocol = link.get("protocol") or {}
        if isinstance(protocol, dict) and protocol.get("attack_active"):
            injected = {k: v for k, v in (protocol.get("attack") or {}).items() if v}
            alarms.append({"severity": "major", "object": f"link {name}",
                           "message": f"attack or fault injected: {injected}"})
        if link.get("state") == "up" and link.get("key_store_fill_bits") == 0:
            alarms.append({"severity": "minor", "object": f"link {name}", "message": "key store empty"})
    return alarms


TWIN_ACTIONS = {"cut": "twin.link_cut", "restore": "twin.link_restored", "attack": "twin.eavesdropper_added",
                "clear-attack": "twin.eavesdropper_cleared"}
# An intercept-resend eavesdropper on every pulse: QBER ~25 %, far above the 11 % threshold, no key distilled.
DEFAULT_EAVESDROPPER = {"intercept_resend_fraction": 1.0}


def twin_admin(link_id: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inject or clear a fault on a link of the embedded twin (``cut``, ``restore``, ``attack`` with an attack
    configuration, ``clear-attack``), recorded in the audit log. Only for the twin: a real network is not
    the portal's to break."""
    if action not in TWIN_ACTIONS:
        raise BadRequest(f"unknown action {action!r}", details={"actions": sorted(TWIN_ACTIONS)})
    view = network_view()
    if not view["simulated"]:
        raise Forbidden("fault injection is only for the simulated network (the embedded twin)")
    link = next((entry for entry in view["links"] if entry.get("id") == link_id), None)
    if link is None:
        raise NotFound(f"no link {link_id!r}", details={"links": [entry.get("id") for entry in view["links"]]})
    if action == "attack":
        body = body or dict(DEFAULT_EAVESDROPPER)
    node = QkdNode.objects.filter(node_id__in=link.get("endpoints") or [], enabled=True, source="twin").first()
    if node is None:
        raise ServiceUnavailable(f"no twin node at the ends of {link_id} is registered")
    try:
        after = registry.client_for(node).admin_link(link_id, action, body if action == "attack" else None)
    except KmeUnavailable as exc:
        raise ServiceUnavailable(f"the twin did not answer: {exc.message}") from None
    except KmeRejected as exc:
        raise BadRequest(f"the twin refused: {exc.message}", details=exc.details) from None
    audit.record(TWIN_ACTIONS[action], object_type="qkd_link", object_id=link_id,
                 details={"node": node.node_id, "attack": body if action == "attack" else None,
                          "state_after": after.get("state") if isinstance(after, dict) else None})
    return after
