"""The services' series of ``/metrics`` (registered with ``portal.metrics``): service orders (key streams, IPsec
tunnels, TLS sessions: every type registered with ``services.orders``) by kind and state and per tenant, and the QKD
network's own series, re-exported from the KMEs.

The QKD links' series are the KMEs' own: the portal scrapes each registered node's ``/metrics`` (the twin exports
key rate, QBER, excess noise, reconciliation efficiency, aborted blocks, key-store fill, link state) with the
credentials it already holds for that node (the twin wants the portal's client certificate) and re-exports them
with a ``node`` label naming the KME that reported them. Why here and not a Prometheus job per KME: the portal
has the node registry and the mTLS credentials (a job per KME would need the portal's private key copied to
the Prometheus host and a config change whenever an operator adds a node), and it can say which KMEs did not
answer (``qxaas_kme_up``), including real KMEs that have no Prometheus endpoint. A single-process twin reports
the whole network at every node: a series is taken from the first node (in node order) that reports it, so
each link appears once and another node still reports it when one KME is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from portal.metrics import gauge, register_collector
from tenants.models import Tenant

from . import registry
from .models import QkdNode
from .orders import order_types

log = logging.getLogger(__name__)


def order_families() -> Iterator[Metric]:
    """Live orders by kind and state (every live state of every type, zeros included) and per tenant."""
    tenants = dict(Tenant.objects.values_list("pk", "slug"))
    by_state, by_tenant = [], []
    for order_type in order_types():
        model = order_type.model
        counts: dict[str, int] = dict.fromkeys(model.live_states, 0)
        per_tenant: dict[int, int] = {}
        rows = (model.objects.unscoped().filter(state__in=list(model.live_states))
                .values_list("tenant_id", "state"))
        for tenant_id, state in rows.iterator():
            counts[state] = counts.get(state, 0) + 1
            per_tenant[tenant_id] = per_tenant.get(tenant_id, 0) + 1
        by_state += [([model.order_kind, state], n) for state, n in counts.items()]
        by_tenant += [([tenants[t], model.order_kind], n) for t, n in per_tenant.items() if t in tenants]
    yield gauge("qxaas_service_orders", "Live service orders by kind and state (degraded tunnels, sessions...).",
                 ["kind", "state"], by_state)
    yield gauge("qxaas_tenant_live_orders", "Live service orders of the tenant by kind (streams, tunnels, "
                 "sessions).", ["tenant", "kind"], by_tenant)


# -- the QKD network: the KMEs' own series, re-exported --------------------------------------------------------
FEDERATE_TIMEOUT_S = (2.0, 4.0)
FEDERATE_CACHE_S = 5.0  # several web processes and scrapers: ask each KME at most every few seconds
_federated: tuple[float, list[Metric]] | None = None
_federate_lock = threading.Lock()


def _scrape_node(node: QkdNode) -> tuple[str, str | None, float]:
    start = time.perf_counter()
    client = registry.client_for(node)
    try:
        response = client.session.get(client.endpoint.base_url.rstrip("/") + "/metrics", timeout=FEDERATE_TIMEOUT_S)
    except Exception as exc:  # unreachable, TLS failure: reported as qxaas_kme_up 0
        log.warning("KME %s: metrics unavailable (%s)", node.node_id, type(exc).__name__)
        return node.node_id, None, time.perf_counter() - start
    text = response.text if response.status_code == 200 else ""
    if response.status_code != 200:
        log.info("KME %s has no metrics endpoint (HTTP %s)", node.node_id, response.status_code)
    return node.node_id, text, time.perf_counter() - start


def network_families() -> list[Metric]:
    global _federated
    with _federate_lock:
        if _federated is not None and time.monotonic() - _federated[0] < FEDERATE_CACHE_S:
            return _federated[1]
        families = _federate()
        _federated = (time.monotonic(), families)
        return families


def _federate() -> list[Metric]:
    registry.ensure_twin_registered()
    nodes = sorted(QkdNode.objects.filter(enabled=True), key=lambda n: n.node_id)
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        results = list(pool.map(_scrape_node, nodes))
    merged: dict[str, Metric] = {}
    seen: set[tuple] = set()
    up, seconds = [], []
    for node_id, text, elapsed in results:
        up.append(([node_id], 0.0 if text is None else 1.0))
        seconds.append(([node_id], elapsed))
        if not text:
            continue
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("KME %s: unparsable metrics (%s)", node_id, exc)
            continue
        for family in families:
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                identity = (sample.name, tuple(sorted(sample.labels.items())))
                if identity in seen:
                    continue
                seen.add(identity)
                labels = dict(sample.labels)
                labels.setdefault("node", node_id)  # qkd_node_* series already name their node
                out.add_sample(sample.name, labels, sample.value)
    return [
        gauge("qxaas_kme_up", "1 when the portal read the KME's metrics (0: unreachable or refused).",
               ["node"], up),
        gauge("qxaas_kme_scrape_duration_seconds", "Time to read the KME's metrics.", ["node"], seconds),
        *merged.values(),
    ]


register_collector("orders", order_families)
register_collector("network", network_families)
