"""The meters QXaaS counts, in one place.

A *meter* is what a service consumes (``qkd_key_bits``); a *quota key* is a meter with its window
(``qkd_key_bits.day``). Cumulative meters are limited per day and per month; concurrent meters (tunnels,
sessions, streams) are limited by how many are open at once and are given back with ``release``; duration
meters (``ipsec_tunnel_seconds``) record how long a service order was active, for billing, and limit nothing.
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


    @property
    def is_duration(self) -> bool:
        """A duration meter records an order's active time (service-seconds); it has no quota of its own."""
        return not self.windows


# The meter names, spelled once: import these instead of writing the strings.
KEY_BITS = "qkd_key_bits"
ENTROPY_BYTES = "entropy_bytes"
IPSEC_TUNNELS = "ipsec_tunnels"
TLS_SESSIONS = "tls_sessions"
KEY_STREAMS = "key_streams"
KEY_STREAM_SECONDS = "key_stream_seconds"
IPSEC_TUNNEL_SECONDS = "ipsec_tunnel_seconds"
TLS_SESSION_SECONDS = "tls_session_seconds"

METERS: dict[str, Meter] = {
    m.name: m
    for m in (
        Meter(KEY_BITS, "bit", "QKD key bits", (Window.DAY, Window.MONTH)),
        Meter(ENTROPY_BYTES, "byte", "QRNG entropy bytes", (Window.DAY, Window.MONTH)),
        Meter(IPSEC_TUNNELS, "tunnel", "Concurrent IPsec tunnels", (Window.CONCURRENT,)),
        Meter(TLS_SESSIONS, "session", "Concurrent TLS sessions", (Window.CONCURRENT,)),
        Meter(KEY_STREAMS, "stream", "Concurrent key streams", (Window.CONCURRENT,)),
        # Service-seconds of orders, split at hour boundaries (services.orders.meter_duration).
        Meter(KEY_STREAM_SECONDS, "second", "Key stream time", ()),
        Meter(IPSEC_TUNNEL_SECONDS, "second", "IPsec tunnel time", ()),
        Meter(TLS_SESSION_SECONDS, "second", "TLS session time", ()),
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
