"""Which KMEs the portal brokers from: the node registry, one pooled client per node, cached limits.

With no configuration the embedded twin's nodes are registered automatically from the twin's
``endpoints.json`` (``QKD_TWIN_STATE_DIR``, default ``QXAAS_VAR_DIR/twin``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from portal.errors import BadRequest, ServiceUnavailable

from .models import QkdNode
from .sdqkd.client import KmeClient, KmeEndpoint, KmeRejected, KmeUnavailable

logger = logging.getLogger(__name__)
STATUS_TTL_S = 60.0
STATUS_RETRY_S = 5.0
_clients: dict[tuple, KmeClient] = {}
_status_cache: dict[tuple, tuple[float, dict]] = {}
_status_failures: dict[tuple, float] = {}
_lock = threading.Lock()
_twin_mtime: float | None = None


def twin_endpoints_file() -> Path:
    return Path(settings.QKD_TWIN_STATE_DIR) / "endpoints.json"


@transaction.atomic
def register_twin(endpoints: dict[str, Any]) -> list[QkdNode]:
    """Create or update the twin's nodes from its endpoints description."""
    by_node: dict[str, list[str]] = {}
    for sae_id, entry in sorted(endpoints["saes"].items()):
        by_node.setdefault(entry["node"], []).append(sae_id)
    nodes = []
    for node_id, entry in endpoints["nodes"].items():
        node, _ = QkdNode.objects.update_or_create(
            node_id=node_id,
            defaults={
                "kme_url": entry["url"], "backend_sae_ids": by_node.get(node_id, []), "source": "twin",
                "auth_mode": QkdNode.AuthMode.PROXY_HEADER,
                "client_cert_path": "" if endpoints.get("insecure") else endpoints["portal"]["cert"],
                "client_key_path": "" if endpoints.get("insecure") else endpoints["portal"]["key"],
                "ca_path": "" if endpoints.get("insecure") else endpoints["ca"],
                "enabled": True,
            },
        )
        nodes.append(node)
    return nodes


def ensure_twin_registered() -> None:
    """Register (again) the embedded twin's nodes when its endpoints file appeared or changed."""
    global _twin_mtime
    if not settings.QKD_AUTO_REGISTER_TWIN:
        return
    path = twin_endpoints_file()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return
    if mtime == _twin_mtime:
        return
    register_twin(json.loads(path.read_text()))
    _twin_mtime = mtime


def node(node_id: str) -> QkdNode:
    ensure_twin_registered()
    found = QkdNode.objects.filter(node_id=node_id, enabled=True).first()
    if found is None:
        raise BadRequest(f"unknown QKD node {node_id!r}", details={"nodes": node_ids()})
    return found


def node_ids() -> list[str]:
    ensure_twin_registered()
    return list(QkdNode.objects.filter(enabled=True).values_list("node_id", flat=True))


def endpoint_for(qkd_node: QkdNode) -> tuple[tuple, KmeEndpoint]:
    """How to reach the node's KME, and a key that changes when any of it does (for per-node client caches)."""
    cert = (qkd_node.client_cert_path, qkd_node.client_key_path) if qkd_node.client_cert_path else None
    key = (qkd_node.pk, qkd_node.kme_url, cert, qkd_node.ca_path, qkd_node.auth_mode)
    primary = qkd_node.backend_sae_ids[0] if qkd_node.backend_sae_ids else ""
    return key, KmeEndpoint(base_url=qkd_node.kme_url, backend_sae_id=primary,
                            proxy_header=qkd_node.auth_mode == QkdNode.AuthMode.PROXY_HEADER,
                            client_cert=cert, ca_path=qkd_node.ca_path or None)


def client_for(qkd_node: QkdNode) -> KmeClient:
    key, endpoint = endpoint_for(qkd_node)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = KmeClient(endpoint)
    return client


def link_status(master_node: QkdNode, master_sae: str, slave_sae: str, *, fresh: bool = False) -> dict[str, Any]:
    """The KME's status for a backend SAE pair (limits and stored keys), cached for a minute.

    ``fresh`` asks the KME now (and refreshes this pair's entry only: clearing the whole cache made every
    other pair's next key request pay a status round trip too). When a refresh fails, the limits last read
    are used (they are the KME's rules, which do not change with its health; the key call itself then fails
    if the KME is down), and for ``STATUS_RETRY_S`` no request asks again: a hung KME holds up one request per
    pair every few seconds, not every request (the key gateway's database threads among them)."""
    key = (master_node.pk, master_node.kme_url, master_sae, slave_sae)
    hit = _status_cache.get(key)
    now = time.monotonic()
    if hit and not fresh and now - hit[0] < STATUS_TTL_S:
        return hit[1]
    failed_at = _status_failures.get(key)
    recently_failed = not fresh and failed_at is not None and now - failed_at < STATUS_RETRY_S
    try:
        if recently_failed:
            raise KmeUnavailable("it failed moments ago")
        status = client_for(master_node).status(slave_sae, acting_as=master_sae)
    except KmeUnavailable as exc:
        if not recently_failed:
            _status_failures[key] = now
        if hit and not fresh:
            logger.warning("the KME of %s did not answer status (%s): using its limits read %.0f s ago",
                           master_node.node_id, exc.message, now - hit[0])
            return hit[1]
        raise ServiceUnavailable(f"the KME of {master_node.node_id} is unavailable", code="kme_unavailable",
                                 internal=exc.message) from None
    except KmeRejected as exc:
        raise ServiceUnavailable(f"the KME of {master_node.node_id} refused the status request",
                                 code="kme_rejected", internal=exc.message) from None
    _status_failures.pop(key, None)
    _status_cache[key] = (now, status)
    return status


def forget_status_cache() -> None:
    _status_cache.clear()
    _status_failures.clear()
