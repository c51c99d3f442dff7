"""The meters QXaaS counts, in one place.

A *meter* is what a service consumes (``qkd_key_bits``); a *quota key* is a meter with its window
(``qkd_key_bits.day``). Cumulative meters are limited per day and per month; concurrent meters (tunnels,
sessions, streams) are limited by how many are open at once and are given back with ``release``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Window(StrEnum):
    DAY = "day"
    MONTH = "month"
    CONCURRENT = "concurrent"


def quota_key(meter: str, window: Window) -> str:
    return meter if window == Window.CONCURRENT else f"{meter}.{window.value}"


@dataclass(frozen=True)
class Meter:
    name: str
    unit: str
    label: str
    windows: tuple[Window, ...]

    @property
    def quota_keys(self) -> list[str]:
        return [quota_key(self.name, w) for w in self.windows]


METERS: dict[str, Meter] = {
    m.name: m
    for m in (
        Meter("qkd_key_bits", "bit", "QKD key bits", (Window.DAY, Window.MONTH)),
        Meter("entropy_bytes", "byte", "QRNG entropy bytes", (Window.DAY, Window.MONTH)),
        Meter("ipsec_tunnels", "tunnel", "Concurrent IPsec tunnels", (Window.CONCURRENT,)),
        Meter("tls_sessions", "session", "Concurrent TLS sessions", (Window.CONCURRENT,)),
        Meter("key_streams", "stream", "Concurrent key streams", (Window.CONCURRENT,)),
    )
}

QUOTA_KEYS: list[str] = [k for m in METERS.values() for k in m.quota_keys]
UNLIMITED = -1
# A concurrent meter has one everlasting window.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def split_quota_key(key: str) -> tuple[str, Window]:
    meter, _, window = key.partition(".")
    return meter, Window(window) if window else Window.CONCURRENT


def window_bounds(window: Window, at: datetime) -> tuple[datetime, datetime | None]:
    """Start and end (exclusive) of the quota window containing ``at`` (UTC calendar day / month)."""
    at = at.astimezone(UTC)
    if window == Window.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if window == Window.MONTH:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return start, end
    return EPOCH, None
