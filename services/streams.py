"""ETSI GS QKD 004 key streams as a service: ``open_connect`` / ``get_key`` / ``close`` for tenants' SAEs.

A portal key stream maps onto a backend 004 stream between the portal's SAEs at the two KMEs (the same pairing
as ETSI 014, ``saes.backend_pair``). The backend KME holds the stream's chunks; the portal keeps metadata
only (its ``KeyStream`` row: Key_stream_IDs, SAEs, negotiated QoS, expiry, indexes) and hands each chunk from
the backend to the calling SAE without storing, caching or logging it. The backend Key_stream_ID is the
portal's own: tenants name streams with their own IDs, so one tenant can never reach another's backend stream,
and another tenant's Key_stream_ID is indistinguishable from an unknown one.

A key stream is a service order (``services.orders``): ``key_streams`` (concurrent) is consumed on open and
released once, on close or TTL expiry, and its connected time is metered in ``key_stream_seconds``; each chunk
index is metered once in ``qkd_key_bits`` (idempotency key per stream and index), whichever SAE
reads it first; the peer reading the same index is not charged again. Bad input is refused before anything
reaches the backend, so it costs nothing and loses no chunk.

Rate: chunk ``i`` is due ``(i + 1 - burst) * chunk_bits / Max_bps`` seconds after both SAEs connected (a token
bucket of ``BURST_S`` seconds). A ``get_key`` ahead of that waits within the QoS ``Timeout`` or gets status 6,
so no SAE draws link key faster than its stream's ``Max_bps``.

Waits hold a web worker thread, so they are bounded twice (docs/gateway.md, "Waiting get_key calls"): the
Timeout granted is at most ``ETSI004_MAX_TIMEOUT_MS`` (1 s by default; the backend stream is opened with the
same Timeout, so the KME's own wait for key is bounded alike), and a call that may wait (its chunk not yet due,
or not made ahead at the KME) first takes one of its tenant's ``ETSI004_WAITING_CALLS_PER_TENANT`` slots
(``tenants.slots``). With none free it is answered at once with status 2 (key not yet available: ask again),
charged nothing and taking nothing from the KME. The Celery task ``fill_streams`` makes the
chunks that fall due in the next ``FILL_AHEAD_S`` seconds at the backend ahead of time, so ``get_key``
answers from the backend's buffer.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from portal.errors import BadRequest, ServiceUnavailable, Unauthorized
from tenants import quota, slots
from tenants.meters import KEY_BITS
from tenants.models import UsageRecord

from . import orders, registry
from .models import KeyStream, QkdNode, Sae
from .saes import backend_pair, tenant_sae
from .sdqkd import client004
from .sdqkd import etsi004_spec as spec
from .sdqkd.client import KmeRejected, KmeUnavailable
from .sdqkd.client004 import Kme004Client, StreamAnswer

log = logging.getLogger(__name__)

KEY_METER = KEY_BITS
STREAM_METER = KeyStream.concurrent_meter  # key_streams

MAX_INDEX = 2**31 - 2  # next_index (index + 1) must fit a PositiveIntegerField
BURST_S = 1.0  # a stream may run this many seconds of Max_bps ahead of its schedule
FILL_AHEAD_S = 2.0  # the filler makes chunks due within this horizon
MAX_AHEAD_CHUNKS = 64  # and never more than this many beyond the highest index read
FILL_BUDGET_S = 5.0  # wall-clock budget of one filler run over all streams
ROUTE_FIELDS = ("hops", "path")
LIVE = KeyStream.live_states


# -- input --------------------------------------------------------------------------------------------------
def sae_name(uri: Any, field: str) -> str:
    try:
        return spec.sae_from_uri(uri, field)
    except spec.Etsi004Error as exc:
        raise BadRequest(exc.message, details=exc.details) from None


def parse_ksid(value: Any, *, required: bool = True) -> uuid.UUID | None:
    if value in (None, ""):
        if required:
            raise BadRequest("Key_stream_ID is required")
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadRequest("Key_stream_ID must be a UUID", details=[{"Key_stream_ID": str(value)[:64]}]) from None


def optional_int(value: Any, name: str, maximum: int = MAX_INDEX) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadRequest(f"{name} must be a non-negative integer", details=[{name: value}])
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a non-negative integer", details=[{name: str(value)[:64]}]) from None
    if not 0 <= number <= maximum:
        raise BadRequest(f"{name} must be between 0 and {maximum}", details=[{name: number}])
    return number


def max_timeout_ms() -> int:
    """The longest QoS Timeout the portal grants: a get_key waits in a web worker thread for at most this."""
    return max(0, min(spec.MAX_TIMEOUT_MS, int(settings.ETSI004_MAX_TIMEOUT_MS)))


def validate_qos(raw: Any) -> dict[str, Any]:
    try:
        qos = spec.validate_qos(raw)
    except spec.Etsi004Error as exc:
        raise BadRequest(exc.message, details=exc.details) from None
    qos["Timeout"] = min(qos["Timeout"], max_timeout_ms())  # granted as enforced (OPEN_CONNECT answers it)
    return qos


def granted_timeout_s(stream: KeyStream) -> float:
    """The stream's QoS Timeout in seconds, never above today's cap (for streams opened under a larger one)."""
    return min(int(stream.qos["Timeout"]), max_timeout_ms()) / 1000


# -- backend ------------------------------------------------------------------------------------------------
def backend(node: QkdNode) -> Kme004Client:
    return Kme004Client(registry.client_for(node))


def _backend_error(exc: KmeRejected | KmeUnavailable, node: QkdNode) -> ServiceUnavailable:
    # The caller's input was validated here first: a refusal by the KME is the backend's state, not the caller's.
    return ServiceUnavailable(f"the KME of {node.node_id} cannot serve the key stream now", code="kme_unavailable",
                              internal=exc.message)


def _side(stream: KeyStream, caller: Sae) -> str:
    return "source" if caller.pk == stream.source_id else "destination"


def _backend_identity(stream: KeyStream, side: str) -> tuple[QkdNode, str]:
    if side == "source":
        return stream.source.node, stream.backend_source_sae
    return stream.destination.node, stream.backend_destination_sae


# -- rate ---------------------------------------------------------------------------------------------------
def chunk_bits(stream: KeyStream) -> int:
    return int(stream.qos["Key_chunk_size"]) * 8


def burst_chunks(stream: KeyStream) -> int:
    return max(1, math.ceil(BURST_S * stream.qos["Max_bps"] / chunk_bits(stream)))


def due_at(stream: KeyStream, index: int) -> datetime:
    """When chunk ``index`` may be handed out at the stream's Max_bps."""
    ahead = max(0, index + 1 - burst_chunks(stream))
    return stream.activated_at + timedelta(seconds=ahead * chunk_bits(stream) / stream.qos["Max_bps"])


def last_due_index(stream: KeyStream, at: datetime) -> int:
    elapsed = max(0.0, (at - stream.activated_at).total_seconds())
    return burst_chunks(stream) - 1 + math.floor(elapsed * stream.qos["Max_bps"] / chunk_bits(stream))


# -- views of a stream --------------------------------------------------------------------------------------
def _answer(stream: KeyStream | None, status: int, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "Key_stream_ID": str(stream.ksid) if stream else None}
    out.update(extra)
    return out


def _read(body: Any, fields: tuple[str, ...], call: str) -> dict[str, Any]:
    try:
        return spec.read_call(body, fields, call)
    except spec.Etsi004Error as exc:
        raise BadRequest(exc.message, details=exc.details) from None


def _member_stream(caller: Sae, ksid: uuid.UUID) -> KeyStream:
    """The caller's tenant's stream ``ksid`` (live or ended) that the caller is an application of.

    Another tenant's stream and none at all get the same answer (400); a stream of the tenant that the caller
    is no application of is refused with 401, as at the KMEs."""
    try:
        stream = (KeyStream.objects.for_tenant(caller.tenant).select_related("source__node", "destination__node")
                  .get(ksid=ksid))
    except KeyStream.DoesNotExist:
        raise BadRequest("unknown Key_stream_ID", details=[{"Key_stream_ID": str(ksid)}]) from None
    stream.tenant = caller.tenant  # the same row, already loaded
    if caller.pk not in (stream.source_id, stream.destination_id):
        raise Unauthorized("the calling SAE is not an application of this key stream")
    return stream


def _gone(stream: KeyStream, **extra: Any) -> dict[str, Any]:
    why = "key stream TTL expired" if stream.state == KeyStream.State.EXPIRED else "key stream closed"
    return _answer(stream, spec.STREAM_GONE, message=why, **extra)



# -- OPEN_CONNECT -------------------------------------------------------------------------------------------
def open_connect(caller: Sae, body: dict[str, Any]) -> dict[str, Any]:
    """Open a stream from ``caller`` (status 1: wait for the peer) or join one as its peer (status 0)."""
    tenant = caller.tenant
    body = _read(body, spec.OPEN_CONNECT_FIELDS, "open_connect")
    source_name = sae_name(body.get("source"), "source")
    destination_name = sae_name(body.get("destination"), "destination")
    if source_name != caller.name:
        raise Unauthorized("source must be the calling SAE", details=[{"source": source_name}])
    ksid = parse_ksid(body.get("Key_stream_ID"), required=False)
    existing = None
    if ksid is not None:
        existing = KeyStream.objects.for_tenant(tenant).select_related(
            "source__node", "destination__node").filter(ksid=ksid).first()
    if existing is not None:
        return _join(existing, caller, destination_name)
    qos = validate_qos(body.get("QoS"))
    offer = spec.counter_proposal(qos)
    if offer is not None:
        return {"status": client004.QOS_NOT_MET, "Key_stream_ID": None, "QoS": offer}
    destination = tenant_sae(tenant, destination_name, "destination")
    if destination.pk == caller.pk:
        raise BadRequest("source and destination must be different SAEs")
    pair = backend_pair(caller, destination)
    quota.check(tenant, STREAM_METER, 1)  # before anything is opened at the backend
    backend_ksid = uuid.uuid4()
    try:
        answer = backend(pair.master_node).open_connect(
            pair.master_sae, pair.slave_sae, qos=qos, key_stream_id=str(backend_ksid), acting_as=pair.master_sae)
    except (KmeRejected, KmeUnavailable) as exc:
        raise _backend_error(exc, pair.master_node) from None
    # The KME's QoS over ours: its counter-proposal (status 7/4) or what it granted (status 1); never a longer
    # Timeout than the portal grants.
    negotiated = {**qos, **{k: v for k, v in (answer.qos or {}).items() if k in spec.QOS_DEFAULTS}}
    if isinstance(negotiated.get("Timeout"), int):
        negotiated["Timeout"] = min(negotiated["Timeout"], qos["Timeout"])
    if answer.status in (client004.QOS_NOT_MET, client004.NO_QKD_CONNECTION):
        return {"status": answer.status, "Key_stream_ID": None, "QoS": negotiated}
    if answer.status != client004.PEER_NOT_CONNECTED:
        raise ServiceUnavailable(f"the KME of {pair.master_node.node_id} answered open_connect with status "
                                 f"{answer.status}", details=[{"status": answer.status}])
    now = timezone.now()
    try:
        with transaction.atomic():
            stream = orders.place(
                KeyStream, tenant, reference=f"etsi004:{caller.name}->{destination.name}",
                ksid=ksid or uuid.uuid4(), backend_ksid=backend_ksid, source=caller, destination=destination,
                backend_source_sae=pair.master_sae, backend_destination_sae=pair.slave_sae, qos=negotiated,
                expires_at=now + timedelta(seconds=negotiated["TTL"]))
    except IntegrityError:  # a concurrent open_connect took the proposed Key_stream_ID first
        _close_at_backend(pair.master_node, str(backend_ksid), pair.master_sae)
        return {"status": client004.KSID_IN_USE, "Key_stream_ID": str(ksid), "QoS": qos}
    except Exception:
        # Refused (quota race) or not recorded: the backend stream must not outlive the refusal.
        _close_at_backend(pair.master_node, str(backend_ksid), pair.master_sae)
        raise
    return _answer(stream, client004.PEER_NOT_CONNECTED, QoS=negotiated)


def _join(stream: KeyStream, caller: Sae, destination_name: str) -> dict[str, Any]:
    if stream.state in LIVE and timezone.now() >= stream.expires_at:
        expire(stream)
    if stream.state not in LIVE:
        return _gone(stream, QoS=stream.qos)
    if (stream.state != KeyStream.State.OPENED or caller.pk != stream.destination_id
            or destination_name != stream.source.name):
        return _answer(stream, client004.KSID_IN_USE, QoS=stream.qos)
    node, backend_sae = _backend_identity(stream, "destination")
    try:
        answer = backend(node).open_connect(backend_sae, stream.backend_source_sae, qos=None,
                                            key_stream_id=str(stream.backend_ksid), acting_as=backend_sae)
    except (KmeRejected, KmeUnavailable) as exc:
        raise _backend_error(exc, node) from None
    if answer.status == spec.STREAM_GONE:
        expire(stream)
    if answer.status != client004.SUCCESSFUL:
        return _answer(stream, answer.status, QoS=stream.qos)
    joined = orders.advance(stream, KeyStream.State.CONNECTED, expected=(KeyStream.State.OPENED,))
    if not joined:  # closed meanwhile
        return _answer(stream, client004.KSID_IN_USE, QoS=stream.qos)
    return _answer(stream, client004.SUCCESSFUL, QoS=stream.qos)


# -- GET_KEY ------------------------------------------------------------------------------------------------
def _metadata(stream: KeyStream, index: int, route: dict[str, Any]) -> dict[str, Any]:
    return {"Key_stream_ID": str(stream.ksid), "index": index, "mimetype": stream.qos["Metadata_mimetype"],
            **{k: route[k] for k in ROUTE_FIELDS if k in route}}


def get_key(caller: Sae, params: dict[str, Any]) -> dict[str, Any]:
    """The chunk ``index`` (default: the caller's next) of the stream; the same bytes for both SAEs."""
    params = _read(dict(params.items()), spec.GET_KEY_FIELDS, "get_key")
    ksid = parse_ksid(params.get("Key_stream_ID"))
    index = optional_int(params.get("index"), "index")
    metadata_size = optional_int(params.get("metadata_size"), "metadata_size", maximum=1 << 20)
    stream = _member_stream(caller, ksid)
    now = timezone.now()
    if stream.state in LIVE and now >= stream.expires_at:
        expire(stream)
    if stream.state not in LIVE:
        return _gone(stream)
    if stream.state == KeyStream.State.OPENED:
        return _answer(stream, client004.PEER_NOT_YET_CONNECTED)
    side = _side(stream, caller)
    if index is None:
        index = getattr(stream, f"next_index_{side}")
    # Metadata that would not fit is refused before the chunk leaves the backend (it stays readable).
    predicted = spec.metadata_size(_metadata(stream, index, stream.route))
    if metadata_size is not None and metadata_size < predicted:
        return _answer(stream, client004.METADATA_TOO_SMALL, index=index, metadata_size_needed=predicted)
    bits = chunk_bits(stream)
    metering_key = f"etsi004:{stream.backend_ksid}:{index}"
    reservation = None
    if not UsageRecord.objects.for_tenant(stream.tenant_id).filter(idempotency_key=metering_key).exists():
        # Held before the chunk leaves the backend: parallel reads at the limit never take more link key than
        # the quota allows.
        reservation = quota.reserve(stream.tenant, KEY_METER, bits)
    try:
        return _hand_out(stream, side, index, now, metadata_size, bits, metering_key, reservation)
    finally:
        if reservation is not None:
            quota.release_reservation(reservation)  # a no-op once settled


def _hand_out(stream: KeyStream, side: str, index: int, now: datetime, metadata_size: int | None, bits: int,
              metering_key: str, reservation: quota.Reservation | None) -> dict[str, Any]:
    # Rate shaping at Max_bps: wait for the chunk to fall due within the QoS Timeout, or say status 6.
    wait = (due_at(stream, index) - now).total_seconds()
    if wait > granted_timeout_s(stream):
        return _answer(stream, client004.TIMEOUT, index=index,
                       message=f"chunk {index} is due in {wait:.3f} s at the stream's Max_bps, after the "
                               "QoS Timeout")
    slot = None
    if may_wait(stream, index, wait):
        slot = slots.acquire("etsi004-wait", stream.tenant_id, int(settings.ETSI004_WAITING_CALLS_PER_TENANT),
                             hold_s=granted_timeout_s(stream) + 30)
        if slot is None:
            return _answer(stream, client004.INSUFFICIENT_KEY, index=index, message=(
                f"chunk {index} is not available yet and this tenant has "
                f"{settings.ETSI004_WAITING_CALLS_PER_TENANT} get_key calls waiting already; ask again"
                + (f" in {wait:.3f} s" if wait > 0 else "")))
    try:
        if wait > 0:
            time.sleep(wait)
        return _take_chunk(stream, side, index, metadata_size, bits, metering_key, reservation)
    finally:
        if slot is not None:
            slot.release()


def may_wait(stream: KeyStream, index: int, wait: float) -> bool:
    """Whether serving chunk ``index`` may wait: it is not due yet (Max_bps), or it was not made ahead at the
    KME, which then waits up to the stream's Timeout for key to make it."""
    return wait > 0 or index > stream.prefetched_to or not prefetch_supported(stream.source.node)


def _take_chunk(stream: KeyStream, side: str, index: int, metadata_size: int | None, bits: int,
                metering_key: str, reservation: quota.Reservation | None) -> dict[str, Any]:
    node, backend_sae = _backend_identity(stream, side)
    try:
        answer = backend(node).get_key(str(stream.backend_ksid), index=index, acting_as=backend_sae)
    except KmeRejected as exc:
        return lost_at_backend(stream, node, exc)
    except KmeUnavailable as exc:
        raise _backend_error(exc, node) from None
    if answer.status == spec.STREAM_GONE:  # the backend stream ended (its TTL): so does this one
        expire(stream)
        return _gone(stream, index=index)
    if answer.status == client004.INSUFFICIENT_KEY and chunk_died_in_flight(stream, side, index, answer):
        return lost_at_backend(stream, node, KmeRejected(f"chunk {index} was handed out to a request that never "
                                                         "completed (a portal process died)", status=409))
    if answer.status != client004.SUCCESSFUL:
        return _answer(stream, answer.status, index=index, message=answer.message or "the KME has no chunk now")
    if not answer.key_buffer or answer.index not in (None, index):
        raise ServiceUnavailable(f"the KME of {node.node_id} returned a malformed chunk")
    route = {k: answer.metadata[k] for k in ROUTE_FIELDS if answer.metadata and k in answer.metadata}
    reference = f"etsi004:{stream.ksid}:{index}"
    with transaction.atomic():
        if reservation is not None:
            record = quota.settle(reservation, bits, metering_key, reference)
        else:  # metered when the peer read it: a replay, nothing charged
            record = quota.consume(stream.tenant, KEY_METER, bits, metering_key, reference=reference)
        # The stream's counter moves in the ledger's transaction and only for a new ledger row: it equals the
        # stream's ledger rows (the peer reading the same index is a replay and adds nothing).
        KeyStream.objects.for_tenant(stream.tenant_id).filter(pk=stream.pk).update(
            **{f"next_index_{side}": Greatest(F(f"next_index_{side}"), index + 1)},
            highest_index=Greatest(F("highest_index"), index), route=route,
            chunks_metered=F("chunks_metered") + (0 if record.replayed else 1))
    metadata = _metadata(stream, index, route)
    if metadata_size is not None and spec.metadata_size(metadata) > metadata_size:
        metadata = _metadata(stream, index, {})  # the route changed: keep the chunk, drop the route fields
    return _answer(stream, client004.SUCCESSFUL, index=index, key_buffer=answer.key_buffer, Metadata=metadata)


# -- CLOSE and expiry ---------------------------------------------------------------------------------------
def _close_at_backend(node: QkdNode, backend_ksid: str, backend_sae: str) -> None:
    """Best effort: a backend that already forgot the stream (TTL, restart) is fine."""
    try:
        backend(node).close(backend_ksid, acting_as=backend_sae)
    except (KmeRejected, KmeUnavailable) as exc:
        log.info("closing backend key stream %s at %s: %s", backend_ksid, node.node_id, exc.message)


def close(caller: Sae, body: dict[str, Any]) -> dict[str, Any]:
    """Close the stream at both ends (either SAE may) and release everything."""
    body = _read(body, spec.CLOSE_FIELDS, "close")
    stream = _member_stream(caller, parse_ksid(body.get("Key_stream_ID")))
    if stream.state in LIVE:
        node, backend_sae = _backend_identity(stream, _side(stream, caller))
        _close_at_backend(node, str(stream.backend_ksid), backend_sae)
        orders.finish(stream, KeyStream.State.CLOSED, "closed by an SAE")
    # Closing a stream that has ended (closed by the peer, TTL) is what was asked: status 0 again.
    return _answer(stream, client004.SUCCESSFUL)


def expire(stream: KeyStream) -> bool:
    """End a stream whose TTL has passed (``orders.expire_due`` calls this for every such stream)."""
    node, backend_sae = _backend_identity(stream, "source")
    _close_at_backend(node, str(stream.backend_ksid), backend_sae)
    return orders.finish(stream, KeyStream.State.EXPIRED, "TTL expired")


IN_FLIGHT_GRACE_S = 1.0  # how long a concurrent request for the same chunk gets to record it


def handed_out_before(answer: StreamAnswer) -> bool:
    """The KME says it handed this chunk to this SAE already (the twin says so in its status-2 message; other
    KMEs may word it differently)."""
    return "already delivered" in (answer.message or "")


def chunk_died_in_flight(stream: KeyStream, side: str, index: int, answer: StreamAnswer) -> bool:
    """The KME handed chunk ``index`` out already, but the portal never delivered it to this side (the side's
    next index has not passed it): a portal process died between the KME's answer and its own commit, and the
    chunk died with it. A concurrent request of the same SAE for the same chunk may still be recording it, so
    the side's index is read again after a grace period before the chunk is declared lost."""
    if not handed_out_before(answer) or index < getattr(stream, f"next_index_{side}"):
        return False
    time.sleep(IN_FLIGHT_GRACE_S)
    field = f"next_index_{side}"
    current = KeyStream.objects.for_tenant(stream.tenant_id).filter(pk=stream.pk).values_list(field, flat=True)
    return index >= (current.first() or 0)


def lost_at_backend(stream: KeyStream, node: QkdNode, exc: KmeRejected) -> dict[str, Any]:
    """The KME refuses a live stream's get_key (its input was checked here first): it no longer knows the stream,
    typically because it restarted, or a chunk was lost in flight (``handed_out_before``), after which the two
    SAEs could no longer agree on the stream's chunks. The stream ends here too, its ``key_streams`` slot is
    released (once, by ``orders.finish``), and the SAE is told with 004 status 4 (no QKD connection); it may open
    a new stream."""
    # The stream's reason is shown to its tenant: the KME's own words go to the log only.
    if orders.finish(stream, KeyStream.State.CLOSED, f"lost at the KME of {node.node_id} (KME restart)"):
        log.warning("key stream %s ended: the KME of %s no longer knows it (%s)", stream.ksid, node.node_id,
                    exc.message)
    return _answer(stream, client004.NO_QKD_CONNECTION,
                   message="the QKD network lost this key stream (KME restart); open a new one")


# -- filling the backend's buffer ---------------------------------------------------------------------------
def prefetch_supported(node: QkdNode) -> bool:
    # Prefetch asks get_key with metadata_size=0: the twin makes the chunk at both ends and answers status 8
    # without handing it out. A KME that hands the chunk out anyway would lose it for the source SAE, so only
    # KMEs known to behave (the embedded twin) are asked.
    return node.source == "twin"


def fill_stream(stream: KeyStream, deadline: float, now: datetime | None = None) -> int:
    """Make the chunks due within ``FILL_AHEAD_S`` at the backend ahead of time; the material stays there."""
    now = now or timezone.now()
    node = stream.source.node
    if stream.state != KeyStream.State.CONNECTED or not prefetch_supported(node):
        return 0
    start = max(stream.prefetched_to, stream.highest_index) + 1
    end = min(last_due_index(stream, now + timedelta(seconds=FILL_AHEAD_S)),
              stream.highest_index + MAX_AHEAD_CHUNKS)
    client, made = backend(node), 0
    for index in range(start, end + 1):
        if time.monotonic() >= deadline:
            break
        try:
            answer: StreamAnswer = client.get_key(str(stream.backend_ksid), index=index, metadata_size=0,
                                                  acting_as=stream.backend_source_sae)
        except KmeRejected as exc:
            lost_at_backend(stream, node, exc)
            break
        except KmeUnavailable as exc:
            log.info("prefetching key stream %s: %s", stream.backend_ksid, exc.message)
            break
        if answer.status != client004.METADATA_TOO_SMALL:
            # 2: the links cannot keep up now; anything else: nothing more to do this round. A status 0 would
            # mean the KME handed the chunk out: it is dropped here, never kept.
            answer.key_buffer = None
            break
        made += 1
        KeyStream.objects.for_tenant(stream.tenant_id).filter(pk=stream.pk).update(
            prefetched_to=Greatest(F("prefetched_to"), index))
    return made


def fill_streams(budget_s: float = FILL_BUDGET_S) -> int:
    """One filler round over all connected streams (periodic job, all tenants); returns chunks made."""
    deadline = time.monotonic() + budget_s
    now = timezone.now()
    live = KeyStream.objects.unscoped().select_related("source__node").filter(
        state=KeyStream.State.CONNECTED, expires_at__gt=now).order_by("prefetched_to")
    return sum(fill_stream(stream, deadline, now) for stream in live)
