"""ETSI GS QKD 004 V2.1.1 as both sides of the interface read it: status codes, the QoS defaults and checks,
SAE URIs.

One home for the portal's key streams (``services.streams``), its 004 client (``client004``) and the twin's
KME (``twin/etsi004``). Plain Python, no Django, so the standalone twin can import it too; each side turns
``Etsi004Error`` into its own error response.

The JSON binding (004 defines no transport; this is the REST form of the Madrid SD-QKD stack): each call takes
the fields below under their ETSI names; a field is also recognised in lower case (``key_stream_id``, ``qos``),
the same in all three calls and both implementations; any other field is refused (400), never ignored.

Statuses with their meanings: 6 when the QoS ``Timeout`` passes before the chunk can be handed out (the
Timeout granted is the one enforced, at most ``MAX_TIMEOUT_MS``); 4 for a stream that was closed or whose TTL
has passed (its QKD connection is no more), to both of its applications; 7 with a counter-proposal for a QoS
that cannot be met, a ``Metadata_mimetype`` other than JSON included; 8 with ``metadata_size_needed``
(``metadata_size``: the compact JSON length of the Metadata).
"""

from __future__ import annotations

import json
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
STREAM_GONE = NO_QKD_CONNECTION  # a closed or expired key stream: its QKD connection is no more

# -- the JSON binding ----------------------------------------------------------------------------------------
OPEN_CONNECT_FIELDS = ("source", "destination", "QoS", "Key_stream_ID")
GET_KEY_FIELDS = ("Key_stream_ID", "index", "metadata_size")
CLOSE_FIELDS = ("Key_stream_ID",)

# -- QoS -----------------------------------------------------------------------------------------------------
QOS_DEFAULTS: dict[str, Any] = {
    "Key_chunk_size": 32, "Max_bps": 40000, "Min_bps": 5000, "Jitter": 10, "Priority": 0, "Timeout": 5000,
    "TTL": 3600, "Metadata_mimetype": "application/json",
}
QOS_INTEGERS = ("Key_chunk_size", "Max_bps", "Min_bps", "Jitter", "Priority", "Timeout", "TTL")
MAX_CHUNK_BYTES = 8192
MAX_TTL_S = 7 * 24 * 3600
MAX_TIMEOUT_MS = 10_000  # the longest a get_key waits for its chunk: a longer Timeout is granted as this
SUPPORTED_METADATA_MIMETYPES = ("application/json",)


class Etsi004Error(ValueError):
    """A request that breaks the 004 binding: ``message`` and ``details`` (a list of objects) for the caller."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details or []


def read_call(body: Any, fields: tuple[str, ...], call: str) -> dict[str, Any]:
    """The fields of one call's body or query under their ETSI names (lower-case spellings recognised);
    unknown fields, or one field given twice with different values, are refused."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Etsi004Error(f"{call} takes a JSON object")
    canonical = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    unknown = []
    for name, value in body.items():
        field = canonical.get(name.lower()) if isinstance(name, str) else None
        if field is None:
            unknown.append(str(name)[:64])
        elif field in out and out[field] != value:
            raise Etsi004Error(f"{field} is given twice with different values", [{field: [out[field], value]}])
        else:
            out[field] = value
    if unknown:
        raise Etsi004Error(f"unknown field(s) for {call}", [{"unknown": sorted(unknown), "fields": list(fields)}])
    return out


def counter_proposal(qos: dict[str, Any]) -> dict[str, Any] | None:
    """The QoS to counter-propose (status 7) when ``qos`` asks for what no stream here gives, else None."""
    if qos["Metadata_mimetype"] not in SUPPORTED_METADATA_MIMETYPES:
        return {**qos, "Metadata_mimetype": SUPPORTED_METADATA_MIMETYPES[0]}
    return None


def metadata_size(metadata: dict[str, Any]) -> int:
    """Bytes the Metadata takes (compact JSON): what status 8 says is needed."""
    return len(json.dumps(metadata, separators=(",", ":")).encode())


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
    qos["Timeout"] = min(qos["Timeout"], MAX_TIMEOUT_MS)  # granted as enforced
    return qos


def sae_from_uri(uri: Any, field: str = "source") -> str:
    """The SAE ID of a source/destination URI: its host (``qkd://sae-a:443/app`` -> ``sae-a``, user info and
    port dropped, case kept), or a bare SAE ID."""
    if not isinstance(uri, str) or not uri.strip():
        raise Etsi004Error(f"{field} must be an SAE URI (sae://<SAE ID>)", [{field: uri}])
    uri = uri.strip()
    if "://" not in uri:
        return uri
    authority = uri.split("://", 1)[1]
    for end in "/?#":
        authority = authority.split(end, 1)[0]
    host = authority.rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.split(":", 1)[0]
    if not host:
        raise Etsi004Error(f"{field} names no SAE (sae://<SAE ID>)", [{field: uri[:200]}])
    return host
