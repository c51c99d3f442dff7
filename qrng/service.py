"""The entropy service: one object the Django layer calls (views, Celery tasks stay thin).

It ties the operator's sources (``qrng.sources``), the buffer pool (``qrng.pool``), the formats
(``qrng.formats``) and the quality report (``qrng.quality``) together, and renders what every response needs:
the body, the entropy bytes consumed (the quota and ledger unit, rejected draws included), and provenance
(source, simulated or not, health state) as headers and JSON fields. Errors are exceptions mapped to HTTP
statuses once, in ``http_status``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qrng import formats, quality
from qrng.formats import FormatError
from qrng.pool import EntropyPool, EntropyPoolEmpty, PoolBackend
from qrng.sources import (
    AlarmHook,
    EntropySourceError,
    NoHealthyEntropySource,
    Provenance,
    SourceSet,
    UnknownEntropySource,
    build_source_set,
)

SIMULATED_NOTICE = (
    "Entropy from a simulated source (the network twin's emulated QRNG): a software PRNG, not quantum. "
    "For tests and demonstrations only."
)


@dataclass
class Draw:
    """One served request: the value, what it consumed, and where the bytes came from."""

    format: str
    value: Any
    consumed: int
    provenance: list[Provenance]
    request_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return any(p.simulated for p in self.provenance)

    def json_body(self) -> dict:
        """The JSON response: value under ``data`` plus provenance (raw bytes are base64 here)."""
        value = self.value
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif hasattr(value, "tolist"):
            value = value.tolist()
        body: dict[str, Any] = {"format": self.format, "data": value, **self.extra}
        if self.format == "seed":
            body["hex"] = f"{self.value:x}"  # JSON numbers above 2^53 lose precision in JavaScript clients
        body["bytes_consumed"] = self.consumed
        body["provenance"] = provenance_body(self.provenance, self.request_id)
        return body


def provenance_body(provenance: list[Provenance], request_id: str = "") -> dict:
    simulated = any(p.simulated for p in provenance)
    body: dict[str, Any] = {
        "sources": [p.as_dict() for p in provenance],
        "simulated": simulated,
        "request_id": request_id,
    }
    if simulated:
        body["notice"] = SIMULATED_NOTICE
    return body


def provenance_headers(provenance: list[Provenance], request_id: str = "") -> dict[str, str]:
    """Response headers that say where the bytes came from (for raw and streamed responses)."""
    headers = {
        "X-Entropy-Source": ",".join(p.source for p in provenance),
        "X-Entropy-Source-Kind": ",".join(p.kind for p in provenance),
        "X-Entropy-Simulated": "true" if any(p.simulated for p in provenance) else "false",
        "X-Entropy-Health": ",".join(p.health for p in provenance),
    }
    if request_id:
        headers["X-Request-Id"] = request_id
    return headers


def http_status(exc: Exception) -> int:
    """The HTTP status for an error of this library (400 bad parameters, 503 no healthy entropy)."""
    if isinstance(exc, FormatError):
        return 400
    if isinstance(exc, UnknownEntropySource):
        return 400
    if isinstance(exc, (NoHealthyEntropySource, EntropyPoolEmpty, EntropySourceError)):
        return 503
    return 500


def retry_after(exc: Exception) -> int | None:
    """Seconds for a ``Retry-After`` header on a 503."""
    if isinstance(exc, EntropyPoolEmpty):
        return max(1, round(exc.retry_after))
    if isinstance(exc, EntropySourceError):
        return 5
    return None


class EntropyService:
    """Sources + pool + formats. Thread-safe for concurrent requests (the pool pops atomically)."""

    def __init__(self, sources: SourceSet, pool: EntropyPool | None = None):
        self.sources = sources
        self.pool = pool or EntropyPool(sources)

    @classmethod
    def from_config(
        cls,
        source_configs: list[dict] | str,
        backend: PoolBackend | None = None,
        on_alarm: AlarmHook | None = None,
        **pool_options: Any,
    ) -> EntropyService:
        """Build from the operator's source list; an alarm flushes the pool and then calls ``on_alarm``."""
        service: EntropyService | None = None

        def alarm(event):
            if service is not None:
                service.pool.handle_alarm(event)
            if on_alarm is not None:
                on_alarm(event)

        sources = build_source_set(source_configs, on_alarm=alarm)
        service = cls(sources, EntropyPool(sources, backend, **pool_options))
        return service

    def _reader(self, source: str | None) -> tuple[Callable[[int], bytes], list[Provenance]]:
        """A reader over the pool, or straight from one pinned source (pinned requests bypass the pool)."""
        if source is None:
            reader = self.pool.reader()
            return reader, reader.provenance
        provenance: list[Provenance] = []

        def read(n: int) -> bytes:
            data, prov = self.sources.read(n, source=source)
            if prov not in provenance:
                provenance.append(prov)
            return data

        return read, provenance

    def draw(
        self, format: str, params: dict[str, Any], source: str | None = None, request_id: str = ""
    ) -> Draw:
        """A bounded (non-streamed) request in any format; raises FormatError (400) or a 503 error."""
        read, provenance = self._reader(source)
        result = formats.render(format, read, params)
        return Draw(format, result.value, result.consumed, provenance, request_id)

    def anu(self, length: int, type: str, size: int = 1, request_id: str = "") -> Draw:
        """The ANU-compatible body ``{type, length, data, success}`` (plus provenance in ``extra``)."""
        read, provenance = self._reader(None)
        result = formats.anu(read, length, type, size)
        return Draw("anu", result.value, result.consumed, provenance, request_id)

    def stream(
        self, n: int, encoding: str = "raw", chunk_bytes: int | None = None
    ) -> tuple[Iterator[bytes], list[Provenance], Any]:
        """A large request: (encoded chunks, provenance so far, the stream for ``bytes_served``).

        Fails before returning (so before any header is sent) when no source can serve.
        """
        if not 1 <= n <= formats.MAX_STREAM_BYTES:
            raise FormatError(f"bytes must be in [1, {formats.MAX_STREAM_BYTES}] for a streamed request")
        if encoding not in formats.STREAM_ENCODINGS:
            raise FormatError(f"encoding must be one of {formats.STREAM_ENCODINGS}")
        stream = self.pool.stream(n, chunk_bytes)
        return formats.encode_stream(stream, encoding), stream.provenance, stream

    def capabilities(self) -> dict:
        """Formats, limits, sources with health state and whether simulated, health-test parameters."""
        sources = self.pool.source_health()
        return {
            **formats.describe_formats(),
            "sources": sources,
            "any_simulated": any(s["simulated"] for s in sources),
            "simulated_notice": SIMULATED_NOTICE if any(s["simulated"] for s in sources) else None,
            "pool": self.pool.describe(),
            "quality_report": {
                "max_bytes": quality.MAX_REPORT_BYTES,
                "default_bytes": quality.DEFAULT_REPORT_BYTES,
            },
        }

    def quality_report(
        self, n_bytes: int = quality.DEFAULT_REPORT_BYTES, source: str | None = None, progress=None,
        on_read: Callable[[int], None] | None = None,
    ) -> dict:
        """Draw n bytes (from one source, or the pool) and run the battery; for a Celery task.

        ``on_read(n)`` after each read: the bytes taken out of the pool or source so far (for metering, also
        when the report fails half-way)."""
        read, provenance = self._reader(source)
        if on_read is not None:
            inner = read

            def read(n: int) -> bytes:
                data = inner(n)
                on_read(len(data))
                return data

        report = quality.quality_report(read, n_bytes, progress)
        report["provenance"] = provenance_body(provenance)
        return report
