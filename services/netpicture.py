"""The QKD network drawn as SVG on the server: nodes on a circle, links coloured by state and labelled with
their live secret key rate, QBER and key-store fill. Each link is a keyboard-reachable link to its page."""

from __future__ import annotations

import math
from typing import Any

from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from tenants.charts import human

WIDTH, HEIGHT = 760, 440
COLOURS = {"up": "#237032", "degraded": "#b35c00"}
DOWN = "#c92a2a"  # cut, down, or any state that is not up


def layout(node_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Nodes evenly on an ellipse (a triangle for madqci's three), first node at the top."""
    cx, cy, rx, ry = WIDTH / 2, HEIGHT / 2 + 10, WIDTH / 2 - 150, HEIGHT / 2 - 70
    n = max(1, len(node_ids))
    return {nid: (cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n))
            for i, nid in enumerate(node_ids)}


def link_label(link: dict[str, Any]) -> str:
    parts = [f"{human(link.get('secret_key_rate_bps') or 0)}bit/s"]
    if isinstance(link.get("qber"), (int, float)):
        parts.append(f"QBER {100 * link['qber']:.2f}%")
    if link.get("fill_percent") is not None:
        parts.append(f"store {link['fill_percent']}%")
    return " · ".join(parts)


def draw(network: dict[str, Any]) -> SafeString:
    nodes = [n["id"] for n in network.get("nodes", [])]
    for link in network.get("links", []):  # a link may name a node the portal has not registered
        nodes += [e for e in link.get("endpoints", []) if e not in nodes]
    pos = layout(nodes)
    state_words = ", ".join(f"{k['id']} {k.get('state')}" for k in network.get("links", []))
    summary = f"{len(nodes)} nodes, {len(network.get('links', []))} links" + (f": {state_words}" if state_words
                                                                              else "")
    out = [f'<svg class="network" viewBox="0 0 {WIDTH} {HEIGHT}" role="group" aria-label="QKD network: '
           f'{escape(summary)}" xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif">']
    if network.get("simulated"):
        out.append('<text x="12" y="24" font-size="14" fill="#b53a0b" font-weight="600">'
                   "Simulated backend (embedded QKD network twin)</text>")
    for link in network.get("links", []):
        ends = link.get("endpoints") or []
        if len(ends) != 2 or ends[0] not in pos or ends[1] not in pos:
            continue
        (x1, y1), (x2, y2) = pos[ends[0]], pos[ends[1]]
        state = link.get("state") or "unknown"
        colour = COLOURS.get(state, DOWN)
        dash = "" if state in COLOURS else ' stroke-dasharray="10 7"'
        label = link_label(link) if state == "up" else f"{state.upper()}"
        href = reverse("link", args=[link["id"]])
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        words = f"link {link['id']} between {ends[0]} and {ends[1]}: {state}, {link_label(link)}"
        out.append(f'<a href="{escape(href)}" aria-label="{escape(words)}" data-link="{escape(link["id"])}" '
                   f'data-state="{escape(state)}">'
                   f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" '
                   f'stroke-width="7" stroke-linecap="round"{dash}/>'
                   f'<rect x="{mx - 135:.0f}" y="{my - 25:.0f}" width="270" height="42" rx="6" fill="#fff" '
                   f'stroke="{colour}"/>'
                   f'<text x="{mx:.0f}" y="{my - 8:.0f}" text-anchor="middle" font-size="12" font-weight="600" '
                   f'fill="#1d2330">{escape(link["id"])} · {escape(state)}</text>'
                   f'<text x="{mx:.0f}" y="{my + 9:.0f}" text-anchor="middle" font-size="12" fill="{colour}">'
                   f"{escape(label)}</text></a>")
    for nid in nodes:
        x, y = pos[nid]
        out.append(f'<g data-node="{escape(nid)}"><circle cx="{x:.0f}" cy="{y:.0f}" r="22" fill="#364fc7" '
                   f'stroke="#fff" stroke-width="3"/><text x="{x:.0f}" y="{y + 42:.0f}" text-anchor="middle" '
                   f'font-size="14" font-weight="700" fill="#1d2330">{escape(nid)}</text></g>')
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 - every text above is escaped
