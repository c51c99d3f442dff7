"""The QKD network as operators and tenants see it: nodes, links and live link state.

Link telemetry (secret key rate, QBER, key-store fill, state) comes from KMEs that expose it (the twin's
``/api/v1/topology``, in the spirit of ETSI GS QKD 015's read-only view). KMEs without telemetry still appear as
nodes, with their reachability.
"""

from __future__ import annotations

from typing import Any

from . import registry
from .models import QkdNode
from .sdqkd.client import KmeRejected, KmeUnavailable

LINK_FIELDS = ("id", "endpoints", "technology", "state", "secret_key_rate_bps", "qber", "key_store_fill_bits",
               "key_store_capacity_bits", "keys_consumed_bits", "loss_db", "mode",
               "protocol")  # per-block protocol telemetry (QBER by basis, f, aborts, attack in force)


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
