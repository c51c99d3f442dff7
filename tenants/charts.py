"""Charts drawn on the server as SVG: no JavaScript library, no CDN, readable by screen readers.

Every chart is an ``<svg role="img">`` with a title and a text summary (what a sighted reader gets from it:
the range, the latest value, the total), and the pages show the numbers in words next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 480, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 62, 10, 24, 30
AXIS = "#5d6677"
GRID = "#e4e7ec"


def human(value: float) -> str:
    """1234567 -> '1.23 M': compact axis labels."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g} {suffix}"
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def _frame(title: str, summary: str, top: float, unit: str, first: str, last: str) -> list[str]:
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}: {escape(summary)}" '
             f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="14">',
             f"<title>{escape(title)}</title><desc>{escape(summary)}</desc>"]
    for i in range(3):  # horizontal grid lines with their values
        y = PAD_TOP + plot_h * i / 2
        value = top * (2 - i) / 2
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}">'
                     f"{escape(human(value))}</text>")
    parts.append(f'<text x="4" y="{PAD_TOP - 8}" fill="{AXIS}">{escape(unit)}</text>')
    parts.append(f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}" fill="{AXIS}">{escape(first)}</text>')
    parts.append(f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end" fill="{AXIS}">'
                 f"{escape(last)}</text>")
    return parts


def bar_chart(points: Sequence[tuple[str, float]], *, title: str, unit: str, color: str = "#3b5bdb") -> SafeString:
    """One bar per bucket (``points``: label, value), e.g. usage per hour or per day."""
    values = [max(0.0, float(v)) for _, v in points]
    top = max(values, default=0) or 1.0
    total = sum(values)
    summary = (f"{len(values)} periods from {points[0][0]} to {points[-1][0]}, total {human(total)} {unit}, "
               f"latest {human(values[-1])} {unit}") if points else "no data"
    parts = _frame(title, summary, top, unit, points[0][0] if points else "", points[-1][0] if points else "")
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    step = plot_w / max(1, len(values))
    for i, ((label, _), value) in enumerate(zip(points, values, strict=True)):
        h = plot_h * value / top
        x = PAD_LEFT + i * step + step * 0.15
        parts.append(f'<rect x="{x:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{max(1.0, step * 0.7):.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{escape(label)}: {escape(human(value))} '
                     f"{escape(unit)}</title></rect>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped


def line_chart(points: Sequence[tuple[datetime, float]], *, title: str, unit: str, color: str = "#3b5bdb",
               time_format: str = "%H:%M:%S") -> SafeString:
    """A time series as a line (``points`` in time order), e.g. a link's secret key rate."""
    values = [float(v) for _, v in points]
    top = max(values, default=0) or 1.0
    if points:
        summary = (f"{len(values)} samples from {points[0][0]:{time_format}} to {points[-1][0]:{time_format}}, "
                   f"min {human(min(values))}, max {human(max(values))}, latest {human(values[-1])} {unit}")
        first, last = f"{points[0][0]:{time_format}}", f"{points[-1][0]:{time_format}}"
    else:
        summary, first, last = "no samples yet", "", ""
    parts = _frame(title, summary, top, unit, first, last)
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    if len(points) >= 2:
        t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
        span = (t1 - t0) or 1.0
        xy = [(PAD_LEFT + plot_w * (t.timestamp() - t0) / span, PAD_TOP + plot_h * (1 - v / top))
              for (t, _), v in zip(points, values, strict=True)]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
    elif points:
        parts.append(f'<circle cx="{PAD_LEFT + plot_w:.1f}" cy="{PAD_TOP + plot_h * (1 - values[0] / top):.1f}" '
                     f'r="3" fill="{color}"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped
