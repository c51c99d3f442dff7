"""A client for KMEs' ETSI GS QKD 004 key streams, exposed as REST the way the Madrid SD-QKD stack does it
(``POST /api/open_connect``, ``GET /api/get_key``, ``POST /api/close``).

It rides on the ETSI 014 ``KmeClient`` of the same node (same pooled TLS sessions, same identity and the same
two exceptions, ``KmeUnavailable`` / ``KmeRejected``). 004 outcomes that are not errors (status 1..8) come back
as ``StreamAnswer.status``; only transport trouble and rejected requests raise.

Nothing here retries: ``get_key`` hands a chunk to the application once, so a repeated call is not safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .client import KmeClient, KmeUnavailable

# The 004 status codes live in one module shared with the twin; re-exported here so callers read
# ``client004.SUCCESSFUL`` etc. beside the client that returns them.
from .etsi004_spec import (  # noqa: F401
    INSUFFICIENT_KEY,
    KSID_IN_USE,
    METADATA_TOO_SMALL,
    NO_QKD_CONNECTION,
    PEER_NOT_CONNECTED,
    PEER_NOT_YET_CONNECTED,
    QOS_NOT_MET,
    SUCCESSFUL,
    TIMEOUT,
)


@dataclass
class StreamAnswer:
    """One 004 answer, normalised. ``key_buffer`` (base64) is key material: never log or store it."""

    status: int
    key_stream_id: str | None = None
    qos: dict[str, Any] | None = None
    index: int | None = None
    key_buffer: str | None = None
    metadata: dict[str, Any] | None = None
    message: str | None = None

    def __repr__(self) -> str:  # keeps the key buffer out of tracebacks and debug logs
        return (f"StreamAnswer(status={self.status}, key_stream_id={self.key_stream_id!r}, index={self.index}, "
                f"key_buffer={'<hidden>' if self.key_buffer else None})")


def _answer(body: Any) -> StreamAnswer:
    if not isinstance(body, dict):
        raise KmeUnavailable("the KME's 004 answer is not a JSON object")
    status = body.get("status", body.get("Status"))
    try:
        status = int(status)
    except (TypeError, ValueError):
        raise KmeUnavailable("the KME's 004 answer has no status") from None
    # Dialects: Key_stream_ID / key_stream_id / ksid; QoS / qos; Metadata / metadata.
    ksid = body.get("Key_stream_ID", body.get("key_stream_id", body.get("ksid")))
    index = body.get("index")
    metadata = body.get("Metadata", body.get("metadata"))
    return StreamAnswer(
        status=status,
        key_stream_id=str(ksid) if ksid is not None else None,
        qos=body.get("QoS", body.get("qos")),
        index=int(index) if isinstance(index, int | str) and str(index).isdigit() else None,
        key_buffer=body.get("key_buffer"),
        metadata=metadata if isinstance(metadata, dict) else None,
        message=body.get("message"),
    )


@dataclass
class Kme004Client:
    """ETSI 004 calls at one KME, acting as one of the portal's backend SAEs there."""

    kme: KmeClient

    def _call(self, method: str, path: str, acting_as: str, **kwargs: Any) -> StreamAnswer:
        # KmeClient._call maps transport errors and 4xx/5xx onto KmeUnavailable / KmeRejected in one place.
        return _answer(self.kme._call(method, path, acting_as, **kwargs))

    def open_connect(self, source: str, destination: str, *, qos: dict[str, Any] | None,
                     key_stream_id: str | None, acting_as: str) -> StreamAnswer:
        body: dict[str, Any] = {"source": f"sae://{source}", "destination": f"sae://{destination}"}
        if qos is not None:
            body["QoS"] = qos
        if key_stream_id is not None:
            body["Key_stream_ID"] = key_stream_id
        return self._call("POST", "/api/open_connect", acting_as, json=body)

    def get_key(self, key_stream_id: str, *, index: int, metadata_size: int | None = None,
                acting_as: str) -> StreamAnswer:
        params: dict[str, Any] = {"Key_stream_ID": key_stream_id, "index": index}
        if metadata_size is not None:
            params["metadata_size"] = metadata_size
        return self._call("GET", "/api/get_key", acting_as, params=params)

    def close(self, key_stream_id: str, *, acting_as: str) -> StreamAnswer:
        return self._call("POST", "/api/close", acting_as, json={"Key_stream_ID": key_stream_id})
