"""Readiness of the SD-QKD stack: every enabled node's KME answers."""

from __future__ import annotations

import contextlib

from portal.health import READINESS_CHECKS


def check_sdqkd() -> str:
    from . import registry
    from .models import QkdNode
    from .sdqkd.client import KmeRejected

    registry.ensure_twin_registered()
    nodes = list(QkdNode.objects.filter(enabled=True))
    if not nodes:
        return "no QKD nodes registered"
    for node in nodes:
        client = registry.client_for(node)
        with contextlib.suppress(KmeRejected):  # a refusal is an answer: the KME is up
            client.status(client.endpoint.backend_sae_id)
    return f"{len(nodes)} KMEs reachable"


READINESS_CHECKS["sdqkd"] = check_sdqkd
