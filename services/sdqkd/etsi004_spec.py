"""ETSI GS QKD 004 V2.1.1 as both sides of the interface read it: status codes, the QoS defaults and checks,
SAE URIs.

One home for the portal's key streams (``services.streams``), its 004 client (``client004``) and the twin's
KME (``twin/etsi004``). Plain Python, no Django, so the standalone twin can import it too; each side turns
``Etsi004Error`` into its own error response.
"""

from __future__ import annotations

from typing import Any

# -- status codes --------------------------------------------------------------------------------------------
SUCCESSFUL = 0
PEER_NOT_CONNECTED = 1
INSUFFICIENT_KEY = 2
PEER_NOT_YET_CONNECTED = 3
NO_QKD_CONNECTION = 4
KSID_IN_USE = 5
TIMEOUT = 6
QOS_NOT_MET = 7
METADATA_TOO_SMALL = 8

# -- QoS -----------------------------------------------------------------------------------------------------
QOS_DEFAULTS: dict[str, Any] = {
    "Key_chunk_size": 32, "Max_bps": 40000, "Min_bps": 5000, "Jitter": 10, "Priority": 0, "Timeout": 5000,
    "TTL": 3600, "Metadata_mimetype": "application/json",
}
QOS_INTEGERS = ("Key_chunk_size", "Max_bps", "Min_bps", "Jitter", "Priority", "Timeout", "TTL")
MAX_CHUNK_BYTES = 8192
MAX_TTL_S = 7 * 24 * 3600


class Etsi004Error(ValueError):
    """A request that breaks the 004 binding: ``message`` and ``details`` (a list of objects) for the caller."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details or []


def validate_qos(raw: Any) -> dict[str, Any]:
    """The requested QoS with the defaults filled in; refuses unknown fields and what no KME could honour."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise Etsi004Error("QoS must be an object")
    unknown = sorted(set(raw) - set(QOS_DEFAULTS))
    if unknown:
        raise Etsi004Error("unknown QoS field(s)", [{"unknown": unknown}])
    qos = {**QOS_DEFAULTS, **raw}
    for name in QOS_INTEGERS:
        value = qos[name]
        if isinstance(value, float) and value.is_integer():
            value = qos[name] = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Etsi004Error(f"QoS {name} must be a non-negative integer", [{name: value}])
    if not 1 <= qos["Key_chunk_size"] <= MAX_CHUNK_BYTES:
        raise Etsi004Error(f"QoS Key_chunk_size must be 1..{MAX_CHUNK_BYTES} bytes",
                           [{"Key_chunk_size": qos["Key_chunk_size"]}])
    if not 1 <= qos["TTL"] <= MAX_TTL_S:
        raise Etsi004Error(f"QoS TTL must be 1..{MAX_TTL_S} seconds", [{"TTL": qos["TTL"]}])
    if qos["Max_bps"] < 1:
        raise Etsi004Error("QoS Max_bps must be at least 1")
    if qos["Min_bps"] > qos["Max_bps"]:
        raise Etsi004Error("QoS Min_bps exceeds Max_bps", [{"Min_bps": qos["Min_bps"], "Max_bps": qos["Max_bps"]}])
    if not isinstance(qos["Metadata_mimetype"], str) or len(qos["Metadata_mimetype"]) > 100:
        raise Etsi004Error("QoS Metadata_mimetype must be a string of at most 100 characters")
    return qos


def sae_from_uri(uri: Any, field: str = "source") -> str:
    """``sae://ID``, ``qkd://ID`` or a bare SAE ID."""
    if not isinstance(uri, str) or not uri.strip():
        raise Etsi004Error(f"{field} must be an SAE URI (sae://<SAE ID>)", [{field: uri}])
    return uri.split("://", 1)[1].strip("/") if "://" in uri else uri.strip()
