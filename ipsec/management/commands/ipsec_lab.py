"""``manage.py ipsec_lab up|down|status``: the embedded IPsec lab of ``make run`` (portal.runstack).

``up`` removes what a crashed run left (namespaces with the lab's prefix), builds one namespace and charon per node
of the twin's topology, registers them as the nodes' gateways and reconciles the charons with the database
(tunnels that were live come back with fresh keys). Without root or strongSwan it says why and how to fix it, and
IPsec stays unavailable while everything else runs. ``down`` tears the lab down.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand

from ipsec import lab
from ipsec.models import IpsecGateway


def prefix() -> str:
    """``IPSEC_LAB_PREFIX``, else one derived from the var dir: stable for one installation (a crashed run's
    namespaces are found again), different for two checkouts or a smoke test's temporary var dir."""
    if os.environ.get("IPSEC_LAB_PREFIX"):
        return os.environ["IPSEC_LAB_PREFIX"]
    return "qx" + hashlib.sha1(str(Path(settings.VAR_DIR).resolve()).encode()).hexdigest()[:6]  # noqa: S324 - a name
TOPOLOGIES = Path(__file__).resolve().parents[3] / "services" / "sdqkd" / "topologies"


def topology() -> tuple[list[str], list[tuple[str, str]]]:
    name = os.environ.get("QKD_TWIN_TOPOLOGY", "madqci")
    path = Path(name) if name.endswith((".yaml", ".yml")) else TOPOLOGIES / f"{name}.yaml"
    spec = yaml.safe_load(path.read_text())
    nodes = [n["id"] for n in spec["nodes"]]
    links = [tuple(link["endpoints"]) for link in spec["links"]]
    return nodes, links


class Command(BaseCommand):
    help = "Build (up), tear down (down) or show (status) the embedded IPsec lab"

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=["up", "down", "status"])

    def handle(self, *args, action: str, **options) -> None:
        if action == "down":
            removed = lab.clean_stale(prefix())
            IpsecGateway.objects.filter(source="lab").update(enabled=False, reachable=False)
            self.stdout.write(f"IPsec lab: removed {len(removed)} namespaces")
            return
        if action == "status":
            from ipsec import services

            names = [] if lab.unavailable_reason() else [ns for ns in lab.namespaces()
                                                          if ns.startswith(f"{prefix()}-")]
            self.stdout.write(services.unavailable_reason() or f"IPsec: available; lab namespaces: {' '.join(names)}")
            return
        reason = lab.unavailable_reason()
        if reason:
            IpsecGateway.objects.filter(source="lab").update(enabled=False, reachable=False)
            self.stdout.write(f"IPsec tunnels unavailable: {reason}")
            return
        from ipsec import services

        nodes, links = topology()
        built = lab.build(nodes, links, prefix(), Path(settings.VAR_DIR) / "ipsec-lab")
        services.register_lab(built)
        summary = services.reconcile()
        self.stdout.write(f"IPsec lab up: {', '.join(f'{n.node_id} {n.address}' for n in built.nodes.values())} "
                          f"(namespaces {built.prefix}-*); reconciled: {summary}")
