"""Inline SVG bar charts drawn on the server (no JavaScript, no CDN): grouped bars with a legend."""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

COLOURS = ("#3563c9", "#e07b24", "#2a9d5c", "#b8336a")


def bar_chart(title: str, labels: list[str], series: dict[str, list[float]], unit: str = "",
              width: int = 640, height: int = 260) -> SafeString:
    """Grouped bars: one group per label, one bar per series (values >= 0)."""
    left, bottom, top, right = 70, 40, 30, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([v for values in series.values() for v in values] + [0]) or 1
    group_w = plot_w / max(len(labels), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" style="font:11px sans-serif">',
             f'<text x="{left}" y="16" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>']
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.2f}</text>'
                     f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
    for g, label in enumerate(labels):
        x0 = left + g * group_w + group_w * 0.1
        for s, (name, values) in enumerate(series.items()):
            value = values[g] if g < len(values) else 0
            h = plot_h * max(value, 0) / peak
            parts.append(f'<rect x="{x0 + s * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                         f'<title>{escape(name)} {escape(label)}: {value:,.2f} {escape(unit)}</title></rect>')
        parts.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{top + plot_h + 14}" '
                     f'text-anchor="middle">{escape(label)}</text>')
    for s, name in enumerate(series):
        x = left + s * 150
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{COLOURS[s % len(COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="{height - 5}">{escape(name)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text in it went through escape()
