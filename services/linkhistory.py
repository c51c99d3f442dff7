"""QKD link history: the links' telemetry sampled over time (secret key rate, QBER, key-store fill, aborted
blocks), for the link pages' charts. Samples are network-wide (no tenant data) and kept ``LINK_HISTORY_HOURS``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from portal.errors import ApiError

from .models import LinkSample
from .network import network_view

MIN_INTERVAL_S = 2.0  # two views of the network within this add one sample, not two


def aborted(link: dict[str, Any]) -> int | None:
    blocks = ((link.get("protocol") or {}).get("aborted_blocks") or {})
    return sum(v for v in blocks.values() if isinstance(v, int)) if blocks else None


def record(links: list[dict[str, Any]]) -> int:
    """Store one sample per link unless the last one is fresher than ``MIN_INTERVAL_S``; returns rows added."""
    now = timezone.now()
    latest = LinkSample.objects.order_by("-at").values_list("at", flat=True).first()
    if latest is not None and (now - latest).total_seconds() < MIN_INTERVAL_S:
        return 0
    rows = [LinkSample(link_id=link["id"], at=now, state=link.get("state") or "unknown",
                       secret_key_rate_bps=link.get("secret_key_rate_bps"), qber=link.get("qber"),
                       key_store_fill_bits=link.get("key_store_fill_bits"),
                       key_store_capacity_bits=link.get("key_store_capacity_bits"), aborted_blocks=aborted(link))
            for link in links if link.get("id")]
    LinkSample.objects.bulk_create(rows)
    return len(rows)


def sample() -> int:
    """Sample the network now and prune old samples (the beat task)."""
    try:
        added = record(network_view().get("links", []))
    except ApiError:
        added = 0  # no network reachable: nothing to sample
    LinkSample.objects.filter(at__lt=timezone.now() - timedelta(hours=settings.LINK_HISTORY_HOURS)).delete()
    return added


def history(link_id: str, minutes: int = 30) -> list[LinkSample]:
    since = timezone.now() - timedelta(minutes=minutes)
    return list(LinkSample.objects.filter(link_id=link_id, at__gte=since).order_by("at")[:5000])
