"""Entropy for a tenant: draw or stream from the process's service, metered on ``entropy_bytes``.

Metering rules (one ledger row per request, idempotency key ``entropy:<request id>``):

- Bounded requests (JSON formats, ANU): a quota pre-check (records nothing, draws nothing) answers 429
  before any entropy leaves the pool; then the draw; then ``consume`` of exactly the bytes the draw took
  (rejected integer draws and a discarded odd normal deviate included). A draw that fails (no healthy
  source: 503) records nothing. If ``consume`` still refuses (a concurrent request took the rest of the
  quota), the drawn bytes are dropped unserved and the answer is 429.
- Streams (raw; hex/base64 above the JSON cap): pre-check, then the first chunk is fetched (503 before any
  header, nothing recorded), then the whole requested amount is reserved with ``consume``. When the stream
  ends early (the client disconnected, a source failed mid-stream), ``release`` gives back what never left
  the pool, as a second row ``entropy-release:<request id>``: the ledger's sum is the bytes taken out of the
  pool for the tenant, which are never served to anyone else.

A stream holds a web worker thread while it is written, so streams are bounded per tenant (docs/qrng.md,
"Long downloads"): at most ``QRNG_STREAMS_PER_TENANT`` at once (``tenants.slots``; one more is refused with 429
before anything is reserved or drawn: nothing charged), each chunk must reach the client within
``QRNG_STREAM_SEND_TIMEOUT_S`` (the socket's send timeout, under gunicorn) and the whole stream within
``QRNG_STREAM_MAX_SECONDS``; a stream cut for either is released like any cut stream (the unserved bytes are
given back).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings

from portal.errors import ApiError, BadRequest, RateLimited, ServiceUnavailable
from qrng import formats, runtime
from qrng.formats import FormatError
from qrng.service import Draw, http_status, retry_after
from qrng.sources import EntropySourceError
from tenants import quota, slots
from tenants.meters import ENTROPY_BYTES
from tenants.models import Tenant

log = logging.getLogger(__name__)

METER = ENTROPY_BYTES


def new_request_id() -> str:
    return uuid.uuid4().hex


def as_api_error(exc: Exception) -> ApiError:
    """The portal's error for an error of the QRNG core: 400 for parameters, 503 (+ Retry-After) for sources."""
    status = http_status(exc)
    if status == 400:
        return BadRequest(str(exc))
    if status == 503:  # the source's path or appliance address is for operators (and the log) only
        seconds = retry_after(exc) or 5
        return ServiceUnavailable(runtime.redact(str(exc)), headers={"Retry-After": str(seconds)},
                                  details={"retry_after_seconds": seconds}, internal=str(exc))
    raise exc


def _metered(tenant: Tenant, minimum: int, request_id: str, take: Callable[[], Draw], what: str) -> Draw:
    """Hold ``minimum`` bytes of the quota, draw, then settle exactly what the draw consumed (rejection sampling
    may take more than the minimum: the excess is added within the limits, or the draw is refused and
    dropped). Parallel draws at the limit never take more from the shared pool than the quota allows."""
    reservation = quota.reserve(tenant, METER, max(1, minimum))
    try:
        try:
            result = take()
        except (FormatError, EntropySourceError) as exc:
            raise as_api_error(exc) from exc
        quota.settle(reservation, result.consumed, f"entropy:{request_id}", f"{what}: {result.consumed} bytes")
    finally:
        quota.release_reservation(reservation)  # a no-op once settled
    return result


def draw(tenant: Tenant, format: str, params: dict[str, Any], request_id: str) -> Draw:
    """A bounded request, metered once for exactly the entropy it consumed."""
    try:
        service = runtime.get_service()
        minimum = formats.minimum_consumption(format, params)
    except (FormatError, EntropySourceError) as exc:
        raise as_api_error(exc) from exc
    return _metered(tenant, minimum, request_id, lambda: service.draw(format, params, request_id=request_id), format)


def anu(tenant: Tenant, length: int, type: str, size: int, request_id: str) -> Draw:
    """The ANU-compatible request, metered like ``draw``."""
    try:
        service = runtime.get_service()
        minimum = formats.anu_consumption(length, type, size)
    except (FormatError, EntropySourceError) as exc:
        raise as_api_error(exc) from exc
    return _metered(tenant, minimum, request_id, lambda: service.anu(length, type, size, request_id=request_id),
                    f"anu {type}")


def stream_slot(tenant: Tenant) -> slots.Slot:
    """One of the tenant's concurrent stream slots, or 429 (nothing reserved, drawn or charged)."""
    limit = int(settings.QRNG_STREAMS_PER_TENANT)
    slot = slots.acquire("entropy-stream", tenant.pk, limit, hold_s=2 * settings.QRNG_STREAM_SEND_TIMEOUT_S + 30)
    if slot is None:
        raise RateLimited(f"this tenant has {limit} streamed entropy downloads running already; wait for one to "
                          "finish", details={"concurrent_streams": limit},
                          headers={"Retry-After": str(max(1, math.ceil(settings.QRNG_STREAM_SEND_TIMEOUT_S / 6)))})
    return slot


class MeteredStream:
    """The body of a streamed response: encoded chunks, with the unserved remainder released on close.

    Django registers ``close`` as a resource closer of the ``StreamingHttpResponse``; the WSGI server calls
    it when the response ends, completely or not (a client that hangs up, or one too slow: ``sock``, the
    client's socket under gunicorn, gets the send timeout).
    """

    def __init__(self, tenant: Tenant, n: int, encoding: str, request_id: str, sock=None):
        self.tenant, self.n, self.encoding, self.request_id = tenant, n, encoding, request_id
        self._slot = stream_slot(tenant)  # first: a refused stream reserves and draws nothing
        try:
            self._open(tenant, n, encoding, request_id)
        except BaseException:
            self._slot.release()
            raise
        self._closed = False
        self._deadline = time.monotonic() + settings.QRNG_STREAM_MAX_SECONDS
        if sock is not None and hasattr(sock, "settimeout"):
            # A client that does not take a chunk within this long is cut (gunicorn's write raises), and the
            # thread goes back to the pool; gunicorn resets the socket for the connection's next request.
            sock.settimeout(settings.QRNG_STREAM_SEND_TIMEOUT_S)

    def _open(self, tenant: Tenant, n: int, encoding: str, request_id: str) -> None:
        reservation = quota.reserve(tenant, METER, n)  # held before the pool is drawn from
        try:
            try:
                self._chunks, self.provenance, self._stream = runtime.get_service().stream(
                    n, encoding, settings.QRNG_POOL_CHUNK_BYTES)
            except (FormatError, EntropySourceError) as exc:
                raise as_api_error(exc) from exc
            self.record = quota.settle(reservation, n, f"entropy:{request_id}", f"{encoding} stream: {n} bytes")
        finally:
            quota.release_reservation(reservation)  # a no-op once settled

    @property
    def bytes_served(self) -> int:
        return self._stream.bytes_served

    def content_length(self) -> int:
        if self.encoding == "hex":
            return 2 * self.n
        if self.encoding == "base64":
            return 4 * -(-self.n // 3)
        return self.n

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._chunks)
        try:
            while True:
                if time.monotonic() > self._deadline:  # checked before the next chunk leaves the pool
                    # Headers are sent: the only honest signal left is a body shorter than Content-Length.
                    log.warning("entropy stream %s cut after %d of %d bytes: longer than %d s",
                                self.request_id, self.bytes_served, self.n, settings.QRNG_STREAM_MAX_SECONDS)
                    return
                chunk = next(chunks, None)
                if chunk is None:
                    return
                self._slot.refresh()
                yield chunk
        except EntropySourceError as exc:
            log.warning("entropy stream %s cut after %d of %d bytes: %s",
                        self.request_id, self.bytes_served, self.n, exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._chunks.close()
            unserved = self.n - self.bytes_served
            if unserved > 0:
                quota.release(self.tenant, METER, unserved, f"entropy-release:{self.request_id}",
                              reference=f"{self.encoding} stream cut: {unserved} of {self.n} bytes unserved",
                              consumed_at=self.record.created_at)
        finally:
            self._slot.release()
