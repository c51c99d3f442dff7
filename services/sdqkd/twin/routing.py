"""Key relay paths: fewest hops, ties broken towards links with more key; links that are cut or cannot carry
the transfer are left out."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .link import LinkRuntime


@dataclass(frozen=True)
class Path:
    nodes: tuple[str, ...]  # source ... destination
    links: tuple[str, ...]  # one per hop

    @property
    def hops(self) -> int:
        return len(self.links)


def hop_weight(link: LinkRuntime, sender: str, need_bits: int) -> float | None:
    """Cost of sending ``need_bits`` over ``link`` from ``sender``; None when the link cannot carry it."""
    if not link.is_up():
        return None
    available = link.available_bits(sender)
    if available is None:  # the sender's store is in another process: assume it has key, rank it neutrally
        return 1.5
    if available < need_bits:
        return None
    half_capacity = max(1, link.capacity_bits() // 2)
    return 1.0 + 0.9 * (1.0 - min(1.0, available / half_capacity))


def find_path(
    links: Mapping[str, LinkRuntime],
    source: str,
    destination: str,
    need_bits: int,
    avoid_links: Iterable[str] = (),
) -> Path | None:
    """Dijkstra over the link graph (weights 1..1.9 per hop, so hop count dominates only up to ties)."""
    avoid = set(avoid_links)
    adjacency: dict[str, list[LinkRuntime]] = {}
    for link in links.values():
        if link.id in avoid:
            continue
        for end in link.spec.endpoints:
            adjacency.setdefault(end, []).append(link)
    best: dict[str, float] = {source: 0.0}
    previous: dict[str, tuple[str, str]] = {}
    queue: list[tuple[float, str]] = [(0.0, source)]
    while queue:
        cost, node = heapq.heappop(queue)
        if node == destination:
            break
        if cost > best.get(node, float("inf")):
            continue
        for link in adjacency.get(node, []):
            weight = hop_weight(link, node, need_bits)
            if weight is None:
                continue
            neighbour = link.other_end(node)
            new_cost = cost + weight
            if new_cost < best.get(neighbour, float("inf")):
                best[neighbour] = new_cost
                previous[neighbour] = (node, link.id)
                heapq.heappush(queue, (new_cost, neighbour))
    if destination not in best or destination == source:
        return None
    nodes = [destination]
    hops: list[str] = []
    while nodes[-1] != source:
        node, link_id = previous[nodes[-1]]
        hops.append(link_id)
        nodes.append(node)
    return Path(tuple(reversed(nodes)), tuple(reversed(hops)))
