"""TLS sessions as a service: ordering, provisioning, rotation, supervision and close.

A session is a service order (``services.orders``): placing it takes a ``tls_sessions`` slot; the worker
provisions it (a QKD key pair through ``services.delivery.take_key``, metered in ``qkd_key_bits`` with the
session's order id; then, in managed mode, a pair of stunnel endpoints, ``tls.endpoints``); its active time is
metered in ``tls_session_seconds``; close (or a failure) stops the endpoints, removes the key files and gives
the slot back, once.

The supervisor is the worker side's periodic job (``supervise``, run by ``services.tasks.maintain_orders``):
it restarts a crashed endpoint (the session is ``degraded`` meanwhile), re-creates the endpoints of a live
session whose files are gone (with a fresh key), rotates keys when the policy says so, removes old keys after
their grace period, and stops whatever endpoints run for no live session (left over by a crash). Everything
it needs is on disk (pid files, ``spec.json``) and in the database, so a new worker process after a restart
picks up where the old one stopped.

Key material: taken from ``take_key`` and written straight to the endpoints' 0600 PSK files; never logged,
stored in the database, put in a process's arguments or environment.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from portal.errors import ApiError, BadRequest, Conflict
from services import delivery, orders, registry
from services.saes import SaeBundle, default_sae, register_sae, revoke_certificate
from services.sdqkd.client import KmeRejected, KmeUnavailable
from tenants.models import Tenant

from .endpoints import EndpointError, Node, PairSpec, Supervisor, free_port
from .models import TlsRotation, TlsSession

log = logging.getLogger(__name__)
State = TlsSession.State
LIVE = TlsSession.live_states
KEY_SIZES = (128, 192, 256, 384, 512)
MAX_GRACE_S = 3600
SUPERVISE_LOCK = "tls:supervise"
RELATED = ("tenant", "node_a", "node_b", "sae_a__node", "sae_b__node", "sae_master__node")


# -- configuration ------------------------------------------------------------------------------------------
def supervisor() -> Supervisor:
    return Supervisor(settings.TLS_STATE_DIR)


def placement(node_id: str) -> Node:
    """Where the managed endpoint of ``node_id`` runs: loopback, or the node's namespace and address when
    ``TLS_NODES`` names them (the hook for the lab's node namespaces)."""
    raw = settings.TLS_NODES.get(node_id) or {}
    return Node(address=raw.get("address", "127.0.0.1"), netns=raw.get("netns") or None)


# -- input --------------------------------------------------------------------------------------------------
def parse_target(raw: Any) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    if not isinstance(raw, str) or ":" not in raw:
        raise BadRequest("target must be host:port", details={"target": str(raw)[:200]})
    host, _, port_text = raw.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest("target must be host:port with a port 1-65535", details={"target": raw[:200]})
    return host, int(port_text)


def check_target(host: str, port: int) -> None:
    """The target must be one the operator allows (``TLS_ALLOWED_TARGETS``: hosts or networks) and reachable
    now from node B (a TCP connect), so a session is never provisioned towards nothing."""
    allowed = settings.TLS_ALLOWED_TARGETS
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise BadRequest(f"unknown target host {host!r}", details={"target": f"{host}:{port}"}) from None
    ok = host in allowed or any(address in ipaddress.ip_network(net, strict=False)
                                for net in allowed if _is_network(net))
    if not ok:
        raise BadRequest(f"target host {host!r} is not one the operator allows", details={"allowed": allowed})
    try:
        with socket.create_connection((str(address), port), timeout=settings.TLS_TARGET_CHECK_TIMEOUT):
            pass
    except OSError as exc:
        raise BadRequest(f"target {host}:{port} is unreachable from node B ({exc.strerror or exc})",
                         details={"target": f"{host}:{port}"}) from None


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _optional_int(data: dict, name: str, minimum: int, maximum: int) -> int | None:
    value = data.get(name)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", details={name: str(value)[:64]})
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}", details={name: value})
    return value


def validate(tenant: Tenant, data: dict[str, Any]) -> dict[str, Any]:
    """The order's fields from the request, every rule checked before anything is placed or started."""
    node_a, node_b = registry.node(str(data.get("node_a", ""))), registry.node(str(data.get("node_b", "")))
    if node_a.pk == node_b.pk:
        raise BadRequest("node_a and node_b must be different nodes", details={"node": node_a.node_id})
    mode = data.get("mode") or TlsSession.Mode.MANAGED
    if mode not in TlsSession.Mode.values:
        raise BadRequest(f"mode must be one of {TlsSession.Mode.values}", details={"mode": str(mode)[:32]})
    key_size = data.get("key_size", 256)
    if key_size not in KEY_SIZES:
        raise BadRequest(f"key_size must be one of {list(KEY_SIZES)} bits", details={"key_size": key_size})
    rotate_seconds = _optional_int(data, "rotate_seconds", settings.TLS_MIN_ROTATE_SECONDS, 30 * 86400)
    rotate_bytes = _optional_int(data, "rotate_bytes", settings.TLS_MIN_ROTATE_BYTES, 2**62)
    grace = _optional_int(data, "grace_seconds", 1, MAX_GRACE_S)
    fields: dict[str, Any] = {"mode": mode, "node_a": node_a, "node_b": node_b, "key_size": key_size,
                              "rotate_seconds": rotate_seconds, "rotate_bytes": rotate_bytes,
                              "grace_seconds": settings.TLS_GRACE_SECONDS if grace is None else grace}
    if mode == TlsSession.Mode.MANAGED:
        host, port = parse_target(data.get("target"))
        check_target(host, port)
        fields.update(target_host=host, target_port=port)
    elif data.get("target"):
        fields["target_host"], fields["target_port"] = parse_target(data["target"])
    return fields


# -- the lifecycle ------------------------------------------------------------------------------------------
def open_session(tenant: Tenant, data: dict[str, Any],
                 provision: Callable[[TlsSession], None]) -> tuple[TlsSession, list[SaeBundle]]:
    """Check the request and place the order (``QuotaExceeded`` when no slot is free); ``provision(session)``
    runs after the commit (the caller enqueues ``tls.tasks.provision``). Bring-your-own: the session's own SAEs
    are made in the same transaction, one per endpoint with a client certificate (the bundles, returned here,
    are shown once) and one the portal takes the keys as; a refusal leaves none behind."""
    fields = validate(tenant, data)
    bundles: list[SaeBundle] = []
    with transaction.atomic():
        session = orders.place(TlsSession, tenant, on_commit=provision,
                               reference=f"tls:{fields['node_a'].node_id}->{fields['node_b'].node_id}", **fields)
        if session.mode == TlsSession.Mode.BYO:
            stem = f"tls-{session.uuid.hex[:12]}"
            a, b = fields["node_a"].node_id, fields["node_b"].node_id
            bundles = [register_sae(tenant, f"{stem}-a", a, f"TLS session {session.uuid}: endpoint A"),
                       register_sae(tenant, f"{stem}-b", b, f"TLS session {session.uuid}: endpoint B")]
            master = register_sae(tenant, f"{stem}-k", a, f"TLS session {session.uuid}: the portal's key taker",
                                  with_certificate=False)
            session.sae_a, session.sae_b, session.sae_master = bundles[0].sae, bundles[1].sae, master
            session.save(update_fields=["sae_a", "sae_b", "sae_master"])
    return session, bundles


def session_by_uuid(session_uuid: str) -> TlsSession | None:
    return (TlsSession.objects.unscoped().select_related(*RELATED).filter(uuid=session_uuid).first())


@dataclass(frozen=True)
class Taken:
    key_id: str
    size: int
    key: bytes | None = field(default=None, repr=False)  # managed only: the PSK for the endpoints' files


def _take_key(session: TlsSession, why: str) -> Taken:
    if session.mode == TlsSession.Mode.BYO:
        return _take_byo_key(session, why)
    pair = _take_pair(session, why)
    return Taken(pair.key_id, pair.size, pair.key)


def _take_byo_key(session: TlsSession, why: str) -> Taken:
    """One key for both endpoints of a bring-your-own session: taken at node A's KME by the session's own
    master SAE and delivered (ETSI 014 multicast) to both endpoint SAEs, which fetch it with ``dec_keys``
    and their own certificates. Metered once, with the order id. The portal's copy is dropped here."""
    for sae in (session.sae_master, session.sae_a, session.sae_b):
        sae.tenant = session.tenant
    order = delivery.order_keys(session.sae_master, session.sae_b.name, number=1, size=session.key_size,
                                additional_slave_sae_ids=[session.sae_a.name])
    try:  # the bits are held in the quota (order_keys): settled on delivery, given back on any failure
        try:
            keys = registry.client_for(order.pair.master_node).enc_keys(order.pair.slave_sae, **order.ask())
        except (KmeRejected, KmeUnavailable) as exc:
            raise delivery.backend_error(exc, order.pair.master_node) from None
        taken = delivery.Delivery(order.master, order.slaves, keys, order.backend_slaves)
        delivery.record_deliveries(session.tenant, [taken], order.size, reference=f"tls:{session.uuid}:{why}",
                                   reservation=order.reservation, order_id=session.uuid)
    except BaseException:
        delivery.abandon(order)  # a no-op once settled
        raise
    return Taken(taken.key_ids()[0], order.size)


def _take_pair(session: TlsSession, why: str) -> delivery.KeyPair:
    sae_a = session.sae_a or default_sae(session.tenant, session.node_a.node_id)
    sae_b = session.sae_b or default_sae(session.tenant, session.node_b.node_id)
    session.sae_a, session.sae_b = sae_a, sae_b
    return delivery.take_key(session.tenant, sae_a, sae_b, session.key_size, order_id=session.uuid,
                             reference=f"tls:{session.uuid}:{why}")


def _spec(session: TlsSession) -> PairSpec:
    return PairSpec(str(session.uuid), session.client_port, session.server_port, session.target_host,
                    session.target_port, placement(session.node_a.node_id), placement(session.node_b.node_id))


def _stop(session: TlsSession) -> None:
    """Managed: stop the endpoints and remove their files. Bring-your-own: retire the endpoint credentials."""
    if session.mode == TlsSession.Mode.MANAGED:
        supervisor().stop(str(session.uuid))
    else:
        for sae in (session.sae_a, session.sae_b):
            if sae is not None:
                sae.tenant = session.tenant
                revoke_certificate(sae)
    _retire_all(session)


def _fail(session: TlsSession, reason: str) -> None:
    _stop(session)
    orders.finish(session, State.FAILED, reason)
    log.warning("TLS session %s failed: %s", session.uuid, reason)


def provision(session_uuid: str) -> TlsSession | None:
    """requested -> provisioning -> active: the first key, then (managed) the endpoint pair. Any failure ends
    the session ``failed`` with the reason, nothing left running and the slot given back."""
    session = session_by_uuid(session_uuid)
    if session is None or not orders.advance(session, State.PROVISIONING, expected=(State.REQUESTED,)):
        return session
    try:
        pair = _take_key(session, "initial")
    except ApiError as exc:
        _fail(session, f"no QKD key: {exc.message}")
        return session
    except Exception as exc:
        log.exception("TLS session %s: taking its first key failed", session.uuid)
        _fail(session, f"no QKD key: {type(exc).__name__}")
        return session
    TlsRotation.objects.create(session=session, key_id=pair.key_id, size_bits=pair.size, reason="initial")
    fields: dict[str, Any] = {"key_id": pair.key_id, "rotated_at": timezone.now(), "sae_a": session.sae_a,
                              "sae_b": session.sae_b}
    if session.mode == TlsSession.Mode.MANAGED:
        session.client_port = free_port(placement(session.node_a.node_id).address)
        session.server_port = free_port(placement(session.node_b.node_id).address)
        fields.update(client_port=session.client_port, server_port=session.server_port)
        try:
            supervisor().start(_spec(session), pair.key_id, pair.key)
        except (EndpointError, OSError) as exc:
            _fail(session, f"the endpoints did not start: {exc}")
            return session
    if not orders.advance(session, State.ACTIVE, expected=(State.PROVISIONING,), **fields):
        _stop(session)  # closed while provisioning: the close did not see the endpoints
    return session


def rotate(session: TlsSession, why: str = "manual") -> bool:
    """active -> rotating -> active with a new QKD key and identity. Established connections finish on the
    old key, which the server accepts until ``grace_seconds`` after this rotation. False when the session was
    not active (or another worker rotates it) or no key could be had (it stays active on its current key)."""
    if not orders.advance(session, State.ROTATING, expected=(State.ACTIVE,)):
        return False
    try:
        pair = _take_key(session, why)
    except ApiError as exc:
        log.warning("TLS session %s keeps its key: no new QKD key (%s)", session.uuid, exc.message)
        orders.advance(session, State.ACTIVE, expected=(State.ROTATING,))
        return False
    name = str(session.uuid)
    through = 0
    if session.mode == TlsSession.Mode.MANAGED:
        sup = supervisor()
        through = sup.bytes_through(name)
        try:
            sup.rotate(name, pair.key_id, pair.key)
        except (EndpointError, OSError) as exc:
            log.warning("TLS session %s: rotation could not reach its endpoints: %s", session.uuid, exc)
            orders.advance(session, State.DEGRADED, expected=(State.ROTATING,))
            return False
    TlsRotation.objects.create(session=session, key_id=pair.key_id, size_bits=pair.size, reason=why)
    orders.advance(session, State.ACTIVE, expected=(State.ROTATING,), key_id=pair.key_id,
                   rotated_at=timezone.now(), bytes_at_rotation=through)
    return True


def close(session: TlsSession, state: str = State.CLOSED, reason: str = "closed by the tenant") -> bool:
    """Stop the endpoints, remove every key file, end the order (slot back, time metered): once."""
    if not orders.advance(session, State.CLOSING, expected=LIVE):
        return False
    _stop(session)
    return orders.finish(session, state, reason)


def close_for_tenant(session: TlsSession) -> TlsSession:
    if session.state not in LIVE:
        raise Conflict(f"the session is already {session.state}", details={"state": session.state})
    close(session)
    session.refresh_from_db()
    return session


def expire(session: TlsSession) -> bool:
    return close(session, State.EXPIRED, "expired")


def _retire_all(session: TlsSession) -> None:
    TlsRotation.objects.filter(session=session, retired_at__isnull=True).update(retired_at=timezone.now())


# -- the supervisor -----------------------------------------------------------------------------------------
def _retire_due(sup: Supervisor | None, session: TlsSession, now) -> None:
    rows = list(session.rotations.all())
    due = []
    for row, successor in itertools.pairwise(rows):
        if row.retired_at is None and now >= successor.created_at + timedelta(seconds=session.grace_seconds):
            due.append(row)
    if not due:
        return
    keep = [r.key_id for r in rows if r.retired_at is None and r not in due]
    if sup is not None:
        sup.retire(str(session.uuid), keep)
    TlsRotation.objects.filter(pk__in=[r.pk for r in due]).update(retired_at=now)


def _rotation_due(sup: Supervisor | None, session: TlsSession, now) -> str | None:
    if session.rotate_seconds and session.rotated_at and \
            now >= session.rotated_at + timedelta(seconds=session.rotate_seconds):
        return "time"
    if session.rotate_bytes and sup is not None and \
            sup.bytes_through(str(session.uuid)) - session.bytes_at_rotation >= session.rotate_bytes:
        return "bytes"
    return None


def _heal(sup: Supervisor, session: TlsSession) -> None:
    """Restart what crashed (session degraded meanwhile); a session whose files are gone gets new endpoints
    on a fresh key (its old key is nowhere any more)."""
    name = str(session.uuid)
    alive = sup.alive(name) if (sup.root / name).is_dir() else None
    if session.state == State.ACTIVE and alive is not None and all(alive.values()):
        return
    if not orders.advance(session, State.DEGRADED, expected=(State.ACTIVE, State.DEGRADED)):
        return
    try:
        if alive is None:
            pair = _take_key(session, "restore")
            sup.start(_spec(session), pair.key_id, pair.key)
            _retire_all(session)
            TlsRotation.objects.create(session=session, key_id=pair.key_id, size_bits=pair.size, reason="restore")
            fields: dict[str, Any] = {"key_id": pair.key_id, "rotated_at": timezone.now(), "bytes_at_rotation": 0}
        else:
            restarted = sup.restart_dead(name)
            log.warning("TLS session %s: restarted its %s endpoint(s)", session.uuid, ", ".join(restarted))
            fields = {}
    except (ApiError, EndpointError, OSError) as exc:
        log.warning("TLS session %s stays degraded: %s", session.uuid, getattr(exc, "message", exc))
        return
    orders.advance(session, State.ACTIVE, expected=(State.DEGRADED,), restarts=F("restarts") + 1, **fields)
    session.refresh_from_db(fields=["restarts"])


def supervise() -> dict[str, int]:
    """One pass over every live session (see the module's docstring). Quick when there is nothing to do; one
    pass at a time across workers (a cache lock), each step a conditional state change besides."""
    if not cache.add(SUPERVISE_LOCK, 1, timeout=60):
        return {"skipped": 1}
    out = {"restarted": 0, "rotated": 0, "orphans": 0}
    try:
        sup = supervisor()
        on_disk = sup.names()  # before the query: every directory listed belongs to a row committed by now
        now = timezone.now()
        sessions = list(TlsSession.objects.unscoped().select_related(*RELATED).filter(state__in=LIVE))
        for session in sessions:
            try:
                _supervise_one(sup, session, now, out)
            except Exception:
                log.exception("TLS session %s: supervision failed", session.uuid)
        live = {str(s.uuid) for s in sessions}
        for name in on_disk:  # a directory made after the listing may be a session placed after the query
            if name not in live:
                log.warning("TLS endpoints of %s ran for no live session: stopped and removed", name)
                sup.stop(name)
                out["orphans"] += 1
    finally:
        cache.delete(SUPERVISE_LOCK)
    return out


def _supervise_one(sup: Supervisor, session: TlsSession, now, out: dict[str, int]) -> None:
    managed = session.mode == TlsSession.Mode.MANAGED
    if session.state == State.CLOSING:  # a close interrupted midway (its process died): finish it
        close(session, State.CLOSED, "closed by the tenant")
        return
    if session.state not in (State.ACTIVE, State.DEGRADED):
        return
    if managed:
        before = session.restarts
        _heal(sup, session)
        out["restarted"] += session.restarts - before
        if session.state != State.ACTIVE:
            return
    why = _rotation_due(sup if managed else None, session, now)
    if why and rotate(session, why):
        out["rotated"] += 1
    _retire_due(sup if managed else None, session, timezone.now())


def gateway_report() -> dict[str, str]:
    """{node_id: status in words} of the managed TLS endpoints (stunnel) at each node, for the operators'
    network page: how many live sessions terminate there and how many of their endpoint processes run."""
    sup = supervisor()
    out: dict[str, list[int]] = {}
    live = TlsSession.objects.unscoped().filter(state__in=TlsSession.live_states).select_related("node_a", "node_b")
    for session in live:
        alive = sup.alive(str(session.uuid)) if (sup.root / str(session.uuid)).is_dir() else {}
        for role, node_id in (("client", session.node_a.node_id), ("server", session.node_b.node_id)):
            counts = out.setdefault(node_id, [0, 0])
            counts[0] += 1
            counts[1] += bool(alive.get(role))
    return {node: f"{up} of {total} stunnel endpoints running" for node, (total, up) in out.items()}
