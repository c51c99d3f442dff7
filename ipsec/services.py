"""Quantum-keyed IPsec tunnels as a service order: order, provision, re-key, monitor, probe, close, reconcile.

Every tunnel lives in two charons (the gateways of its two nodes), driven over VICI (``vici_driver``). The rules:

- Nothing half-configured: provisioning that fails removes what it loaded from both gateways before the order
  fails (and the quota slot is released by ``orders.finish``); close removes everything before it finishes.
- Key material goes from ``services.delivery.take_key`` straight into both charons (``load_shared``); only key
  IDs are stored (``Tunnel.current_key_id``, ``TunnelKeyEvent``) or logged.
- Every re-key takes a fresh QKD key (metered in ``qkd_key_bits`` with the order's id), replaces the tunnel's PPK on
  both sides, then re-authenticates make-before-break: the new IKE SA and CHILD SA are up before the old ones are
  deleted, so no packet is lost (docs/ipsec.md).
- The database is the truth: ``reconcile`` removes tunnels charons hold but the database does not know (orphans)
  and re-establishes live tunnels a charon lost (after a restart), with backoff.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import re
import subprocess
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from portal.errors import ApiError, BadRequest, Conflict, ServiceUnavailable
from services import delivery, orders, registry
from services.saes import default_sae
from tenants.models import Tenant

from . import lab, vici_driver
from .models import IpsecGateway, Tunnel, TunnelKeyEvent
from .pki import gateway_credentials, tunnel_certificate, tunnel_identity

log = logging.getLogger(__name__)


def _task(name: str):
    """This app's Celery task ``name``, looked up by name (``ipsec.tasks`` imports this module: no cycle)."""
    import importlib

    return getattr(importlib.import_module("ipsec.tasks"), name)
S = Tunnel.State

# ESP proposals a tenant may choose (strongSwan names); the first is the default.
ESP_PROPOSALS = {
    "aes256gcm16": "AES-GCM-256 (AEAD)",
    "aes128gcm16": "AES-GCM-128 (AEAD)",
    "aes256-sha256": "AES-CBC-256 with HMAC-SHA-256",
    "aes128-sha256": "AES-CBC-128 with HMAC-SHA-256",
}
DEFAULT_ESP_PROPOSAL = "aes256gcm16"
# the algorithm a gateway must have for each proposal (VICI get-algorithms names)
_NEEDS = {"aes256gcm16": "AES_GCM_16", "aes128gcm16": "AES_GCM_16", "aes256-sha256": "AES_CBC",
          "aes128-sha256": "AES_CBC"}
KEY_BITS = 256
RESTORE_BACKOFF_S = (1, 2, 5, 10, 30, 60)


def min_rekey_interval_s() -> int:
    return int(getattr(settings, "IPSEC_MIN_REKEY_INTERVAL_S", 30))


# -- availability and gateways ------------------------------------------------------------------------------
def unavailable_reason() -> str | None:
    """Why tenants cannot order tunnels now (with the fix), or None."""
    if IpsecGateway.objects.filter(enabled=True).exists():
        return None
    why = lab.unavailable_reason()
    if why:
        return f"no IPsec gateway is registered: {why}; or register your gateways in the admin (IPsec gateways)"
    return ("no IPsec gateway is registered: make run registers the lab's gateways (one charon per node); "
            "operators register theirs in the admin (IPsec gateways)")


def register_lab(built: lab.Lab, pools: dict[str, list[str]] | None = None) -> list[IpsecGateway]:
    """Register a lab's charons as the gateways of their nodes (inner pools: 10.<100+i>.0.0/16 by default) and
    load their credentials. Other gateways of the lab source are disabled."""
    out = []
    for node in built.nodes.values():
        pool = (pools or {}).get(node.node_id) or [f"10.{100 + node.index}.0.0/16"]
        gw, _ = IpsecGateway.objects.update_or_create(node_id=node.node_id, defaults={
            "vici_uri": node.vici_uri, "address": node.address, "pools": pool, "netns": node.netns,
            "source": "lab", "enabled": True})
        load_credentials(gw)
        out.append(gw)
    IpsecGateway.objects.filter(source="lab").exclude(pk__in=[g.pk for g in out]).update(enabled=False)
    return out


def ensure_credentials(gw: IpsecGateway) -> None:
    """The gateway's key and trust anchor, loaded once per charon life (a restarted charon lost them)."""
    if not vici_driver.has_private_key(gw.vici_uri):
        load_credentials(gw)


def load_credentials(gw: IpsecGateway) -> None:
    creds = gateway_credentials(gw.address)
    vici_driver.load_credentials(gw.vici_uri, ca_pem=creds.ca_pem, key_pem=creds.key_pem)


def _gateway(node_id: str) -> IpsecGateway:
    gw = IpsecGateway.objects.filter(node_id=node_id, enabled=True).first()
    if gw is None:
        known = list(IpsecGateway.objects.filter(enabled=True).values_list("node_id", flat=True))
        raise BadRequest(f"unknown node {node_id!r}: no IPsec gateway there", details={"nodes": known})
    return gw


# -- ordering -----------------------------------------------------------------------------------------------
def _network(value: Any, field: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        raise BadRequest(f"{field} must be a subnet in CIDR notation with no host bits set, e.g. 10.100.1.0/24",
                         details={field: value}) from None
    if net.version != 4 or net.prefixlen > 30:
        raise BadRequest(f"{field} must be an IPv4 subnet of at least 4 addresses (/30 or shorter)",
                         details={field: value})
    return net


def _check_subnet(gw: IpsecGateway, net: ipaddress.IPv4Network, field: str) -> None:
    if not any(net.subnet_of(ipaddress.ip_network(pool)) for pool in gw.pools):
        raise BadRequest(f"{field} {net} is outside the pools of node {gw.node_id}: {', '.join(gw.pools)}",
                         details={field: str(net), "pools": gw.pools})


def order_tunnel(tenant: Tenant, *, node_a: str, node_b: str, subnet_a: str, subnet_b: str,
                 esp_proposal: str | None = None, rekey_interval_s: int | None = None,
                 key_path: str = Tunnel.KeyPath.END_TO_END, name: str = "") -> Tunnel:
    """Validate and place a tunnel order (one ``ipsec_tunnels`` slot); provisioning is enqueued after the commit.
    Bad input raises ``BadRequest`` before anything is spent or configured."""
    reason = unavailable_reason()
    if reason:
        raise ServiceUnavailable(f"IPsec tunnels are unavailable: {reason}")
    if node_a == node_b:
        raise BadRequest("node_a and node_b must be two different nodes")
    esp_proposal = esp_proposal or DEFAULT_ESP_PROPOSAL
    if esp_proposal not in ESP_PROPOSALS:
        raise BadRequest(f"esp_proposal {esp_proposal!r} is not allowed; allowed: {', '.join(ESP_PROPOSALS)}",
                         details={"allowed": list(ESP_PROPOSALS)})
    interval = rekey_interval_s if rekey_interval_s is not None else max(3600, min_rekey_interval_s())
    if interval < min_rekey_interval_s():
        raise BadRequest(f"rekey_interval_s must be at least {min_rekey_interval_s()} s",
                         details={"minimum": min_rekey_interval_s()})
    if key_path not in Tunnel.KeyPath.values:
        raise BadRequest(f"key_path must be one of {', '.join(Tunnel.KeyPath.values)}")
    gw_a, gw_b = _gateway(node_a), _gateway(node_b)
    net_a, net_b = _network(subnet_a, "subnet_a"), _network(subnet_b, "subnet_b")
    _check_subnet(gw_a, net_a, "subnet_a")
    _check_subnet(gw_b, net_b, "subnet_b")
    if net_a.overlaps(net_b):
        raise BadRequest("subnet_a and subnet_b overlap")
    for gw in (gw_a, gw_b):
        supported = _algorithms(gw)
        if supported is not None and _NEEDS[esp_proposal] not in supported:
            raise BadRequest(f"the gateway of {gw.node_id} does not support {esp_proposal} "
                             f"(its strongSwan lacks {_NEEDS[esp_proposal]}: install libstrongswan-standard-plugins)")
    with transaction.atomic():
        # Both gateways' rows locked: two orders for the same gateways check overlaps one after the other.
        list(IpsecGateway.objects.select_for_update().filter(pk__in=[gw_a.pk, gw_b.pk]).order_by("pk"))
        for other in Tunnel.objects.unscoped().filter(state__in=Tunnel.live_states):
            for mine, field in ((net_a, "subnet_a"), (net_b, "subnet_b")):
                for theirs in (other.subnet_a, other.subnet_b):
                    if mine.overlaps(ipaddress.ip_network(theirs)):
                        whose = "one of your" if other.tenant_id == tenant.pk else "another tenant's"
                        raise BadRequest(f"{field} {mine} overlaps {theirs} of {whose} live tunnels",
                                         details={field: str(mine)})
        return orders.place(Tunnel, tenant, reference=f"ipsec:{node_a}-{node_b}", name=name, node_a=node_a,
                            node_b=node_b, subnet_a=str(net_a), subnet_b=str(net_b), esp_proposal=esp_proposal,
                            rekey_interval_s=interval, key_path=key_path,
                            on_commit=lambda t: _task("provision").delay(t.pk))


_ALGORITHMS: dict[str, set[str]] = {}


def _algorithms(gw: IpsecGateway) -> set[str] | None:
    """The gateway's algorithms (cached per process); None when it cannot be asked now."""
    if gw.vici_uri not in _ALGORITHMS:
        try:
            _ALGORITHMS[gw.vici_uri] = vici_driver.algorithms(gw.vici_uri)
        except vici_driver.GatewayUnavailable:
            return None
    return _ALGORITHMS[gw.vici_uri]


# -- keys ---------------------------------------------------------------------------------------------------
def _take_key(tunnel: Tunnel) -> tuple[str, bytes, int]:
    """A fresh QKD key for the tunnel's two gateways, metered to the tenant with the order's id: (key ID(s),
    key, bits). Per-hop: one key per QKD link on the path, combined by XOR (what a trusted-node relay does),
    each hop metered."""
    tenant = tunnel.tenant
    sae_a, sae_b = default_sae(tenant, tunnel.node_a), default_sae(tenant, tunnel.node_b)
    reference = f"ipsec:{tunnel.uuid}"
    if tunnel.key_path == Tunnel.KeyPath.END_TO_END:
        pair = delivery.take_key(tenant, sae_a, sae_b, KEY_BITS, reference=reference, order_id=tunnel.uuid)
        return pair.key_id, pair.key, pair.size
    path = delivery.link_path(registry.node(tunnel.node_a), registry.node(tunnel.node_b))
    combined = bytes(KEY_BITS // 8)
    ids = []
    for here, there in itertools.pairwise(path):
        pair = delivery.take_key(tenant, default_sae(tenant, here), default_sae(tenant, there), KEY_BITS,
                                 reference=reference, order_id=tunnel.uuid)
        combined = bytes(x ^ y for x, y in zip(combined, pair.key, strict=True))
        ids.append(pair.key_id)
    return ",".join(ids), combined, KEY_BITS * len(ids)


def _key_error(exc: Exception) -> str:
    message = exc.message if isinstance(exc, ApiError) else str(exc)
    return f"QKD key unavailable: {message}"


# -- provisioning -------------------------------------------------------------------------------------------
def _host(subnet: str) -> str:
    """The tenant host of a subnet: its first address."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def _sides(tunnel: Tunnel) -> tuple[IpsecGateway, IpsecGateway]:
    gws = {g.node_id: g for g in IpsecGateway.objects.filter(node_id__in=[tunnel.node_a, tunnel.node_b])}
    return gws[tunnel.node_a], gws[tunnel.node_b]


def _tenant_hosts(tunnel: Tunnel, add: bool) -> None:
    for gw, subnet in zip(_sides(tunnel), (tunnel.subnet_a, tunnel.subnet_b), strict=True):
        if gw.netns:
            lab.run(lab.IP, "-n", gw.netns, "addr", "replace" if add else "del", f"{_host(subnet)}/32", "dev", "lo",
                    check=add, timeout=10)


def _load(tunnel: Tunnel, key: bytes) -> None:
    """The connection and the PPK into both gateways (B, the responder, first)."""
    gw_a, gw_b = _sides(tunnel)
    ppk = vici_driver.ppk_id(tunnel.uuid)
    ids = {gw.node_id: tunnel_identity(tunnel.uuid, gw.node_id) for gw in (gw_a, gw_b)}
    certs = {gw.node_id: tunnel_certificate(gw.address, ids[gw.node_id]) for gw in (gw_a, gw_b)}
    for me, peer, mine, theirs in ((gw_b, gw_a, tunnel.subnet_b, tunnel.subnet_a),
                                   (gw_a, gw_b, tunnel.subnet_a, tunnel.subnet_b)):
        ensure_credentials(me)
        vici_driver.load_tunnel(me.vici_uri, tunnel.conn_name, local_addr=me.address, remote_addr=peer.address,
                                local_ts=mine, remote_ts=theirs, esp_proposal=tunnel.esp_proposal, ppk=ppk,
                                cert_pem=certs[me.node_id], peer_cert_pem=certs[peer.node_id],
                                local_id=ids[me.node_id], remote_id=ids[peer.node_id])
        vici_driver.load_ppk(me.vici_uri, tunnel.conn_name, ppk, key)


def _wait_up(tunnel: Tunnel, timeout_s: float = 10.0) -> vici_driver.SaState:
    """Both sides: IKE SA ESTABLISHED with the PPK in use and the CHILD SA INSTALLED."""
    gw_a, gw_b = _sides(tunnel)
    deadline = time.monotonic() + timeout_s
    while True:
        a = vici_driver.list_sas(gw_a.vici_uri).get(tunnel.conn_name)
        b = vici_driver.list_sas(gw_b.vici_uri).get(tunnel.conn_name)
        if a and b and a.up and b.up:
            if not (a.ppk and b.ppk):
                raise vici_driver.GatewayError("the IKE SA came up without the PPK")
            return a
        if time.monotonic() > deadline:
            raise vici_driver.GatewayError(f"the tunnel did not come up in {timeout_s:.0f} s")
        time.sleep(0.05)


def remove_everywhere(tunnel: Tunnel) -> list[str]:
    """Terminate and unload the tunnel on both gateways and remove its tenant hosts; the errors (empty: done)."""
    errors = []
    for gw in IpsecGateway.objects.filter(node_id__in=[tunnel.node_a, tunnel.node_b]):
        try:
            vici_driver.remove(gw.vici_uri, tunnel.conn_name)
        except (vici_driver.GatewayUnavailable, vici_driver.GatewayError) as exc:
            errors.append(f"{gw.node_id}: {exc}")
    try:
        _tenant_hosts(tunnel, add=False)
    except (OSError, subprocess.SubprocessError) as exc:
        errors.append(str(exc))
    return errors


def _establish(tunnel: Tunnel, kind: str) -> None:
    """Key, load, initiate and wait (provisioning and restore); on failure everything loaded is removed and the
    error raised."""
    started = time.monotonic()
    try:
        key_id, key, bits = _take_key(tunnel)
    except Exception as exc:
        raise _Failed(_key_error(exc)) from None
    try:
        _tenant_hosts(tunnel, add=True)
        _load(tunnel, key)
        del key
        vici_driver.initiate(_sides(tunnel)[0].vici_uri, tunnel.conn_name)
        sa = _wait_up(tunnel)
    except Exception as exc:
        remove_everywhere(tunnel)
        TunnelKeyEvent.objects.create(tunnel=tunnel, kind=kind, key_id=key_id, key_bits=bits, ok=False,
                                      error=str(exc)[:500])
        raise _Failed(f"the gateways could not establish the tunnel: {exc}") from None
    now = timezone.now()
    TunnelKeyEvent.objects.create(tunnel=tunnel, kind=kind, key_id=key_id, key_bits=bits, ike_sa_id=sa.ike_id,
                                  duration_ms=int((time.monotonic() - started) * 1000))
    tunnel._established = {"current_key_id": key_id, "established_at": now, "ike_sa_id": sa.ike_id,
                           "next_rekey_at": now + timedelta(seconds=tunnel.rekey_interval_s)}


class _Failed(Exception):
    pass


def provision(tunnel_pk: int) -> Tunnel:
    tunnel = Tunnel.objects.unscoped().select_related("tenant").get(pk=tunnel_pk)
    if not orders.advance(tunnel, S.PROVISIONING, expected=(S.REQUESTED,)):
        return tunnel
    try:
        _establish(tunnel, TunnelKeyEvent.Kind.INITIAL)
    except _Failed as exc:
        orders.finish(tunnel, S.FAILED, str(exc))
        log.info("tunnel %s failed: %s", tunnel.uuid, exc)
        return tunnel
    if not orders.advance(tunnel, S.UP, expected=(S.PROVISIONING,), **tunnel._established):
        remove_everywhere(tunnel)  # closed while provisioning: leave nothing behind
    return tunnel


# -- re-keying ----------------------------------------------------------------------------------------------
def rekey(tunnel_pk: int) -> Tunnel:
    """A fresh QKD key into the tunnel: PPK replaced on both sides, then make-before-break re-authentication.
    A failure leaves the old SA carrying traffic; the tunnel stays up and retries at the next interval."""
    tunnel = Tunnel.objects.unscoped().select_related("tenant").get(pk=tunnel_pk)
    if not orders.advance(tunnel, S.REKEYING, expected=(S.UP,)):
        return tunnel
    started = time.monotonic()
    gw_a, gw_b = _sides(tunnel)
    key_id, bits, fields = "", 0, {}
    try:
        key_id, key, bits = _take_key(tunnel)
        current = vici_driver.list_sas(gw_a.vici_uri).get(tunnel.conn_name)
        if current is None or not current.up:
            raise vici_driver.GatewayError("the tunnel has no established SA to re-key")
        ppk = vici_driver.ppk_id(tunnel.uuid)
        vici_driver.load_ppk(gw_b.vici_uri, tunnel.conn_name, ppk, key)  # the responder first
        vici_driver.load_ppk(gw_a.vici_uri, tunnel.conn_name, ppk, key)
        del key
        sa = vici_driver.reauthenticate(gw_a.vici_uri, tunnel.conn_name, current.ike_id)
        if not sa.ppk:
            raise vici_driver.GatewayError("the new IKE SA came up without the PPK")
    except Exception as exc:
        error = _key_error(exc) if not key_id else str(exc)
        TunnelKeyEvent.objects.create(tunnel=tunnel, kind=TunnelKeyEvent.Kind.REKEY, key_id=key_id or "-",
                                      key_bits=bits, ok=False, error=error[:500],
                                      duration_ms=int((time.monotonic() - started) * 1000))
        log.warning("re-key of tunnel %s failed: %s", tunnel.uuid, error)
        fields = {"next_rekey_at": timezone.now() + timedelta(seconds=min(30, tunnel.rekey_interval_s))}
        orders.advance(tunnel, S.UP, expected=(S.REKEYING,), **fields)
        return tunnel
    now = timezone.now()
    TunnelKeyEvent.objects.create(tunnel=tunnel, kind=TunnelKeyEvent.Kind.REKEY, key_id=key_id, key_bits=bits,
                                  ike_sa_id=sa.ike_id, duration_ms=int((time.monotonic() - started) * 1000))
    orders.advance(tunnel, S.UP, expected=(S.REKEYING,), current_key_id=key_id, ike_sa_id=sa.ike_id,
                   established_at=now, rekey_count=tunnel.rekey_count + 1,
                   next_rekey_at=now + timedelta(seconds=tunnel.rekey_interval_s))
    return tunnel


# -- monitoring and reconciliation --------------------------------------------------------------------------
def monitor() -> dict[str, int]:
    """One look at every gateway with live tunnels (list-sas): counters, dropped tunnels and dead charons
    (degraded), orphans removed, degraded tunnels re-established with backoff once both gateways answer."""
    now = timezone.now()
    live = list(Tunnel.objects.unscoped().select_related("tenant").filter(
        state__in=[S.UP, S.REKEYING, S.DEGRADED]))
    seen: dict[str, dict[str, vici_driver.SaState] | None] = {}
    for gw in IpsecGateway.objects.filter(enabled=True):
        try:
            sas = vici_driver.list_sas(gw.vici_uri)
            conns = vici_driver.list_conns(gw.vici_uri)
            error = ""
        except vici_driver.GatewayUnavailable as exc:
            sas, conns, error = None, set(), str(exc)
        seen[gw.node_id] = sas
        IpsecGateway.objects.filter(pk=gw.pk).update(reachable=sas is not None, last_error=error, checked_at=now)
        if sas is not None:
            _remove_orphans(gw, set(sas) | conns)
    out = {"degraded": 0, "restored": 0}
    for tunnel in live:
        a, b = seen.get(tunnel.node_a), seen.get(tunnel.node_b)
        sa_a = a.get(tunnel.conn_name) if a else None
        sa_b = b.get(tunnel.conn_name) if b else None
        if tunnel.state == S.UP and sa_a and sa_a.up:
            Tunnel.objects.unscoped().filter(pk=tunnel.pk).update(
                bytes_in=sa_a.bytes_in, bytes_out=sa_a.bytes_out, packets_in=sa_a.packets_in,
                packets_out=sa_a.packets_out, counters_at=now)
        if tunnel.state == S.UP and not (sa_a and sa_a.up and sa_b and sa_b.up):
            down = [n for n, sas in ((tunnel.node_a, a), (tunnel.node_b, b)) if sas is None]
            why = f"the gateway of {', '.join(down)} is not reachable" if down else "the IKE/CHILD SA dropped"
            if orders.advance(tunnel, S.DEGRADED, expected=(S.UP,), reason=why, restore_attempts=0,
                              next_attempt_at=now):
                out["degraded"] += 1
                log.warning("tunnel %s degraded: %s", tunnel.uuid, why)
        elif tunnel.state == S.DEGRADED and a is not None and b is not None and (
                tunnel.next_attempt_at is None or tunnel.next_attempt_at <= now):
            out["restored"] += restore(tunnel)
    return out


def _remove_orphans(gw: IpsecGateway, names: set[str]) -> None:
    """Tunnels a gateway holds that no live order wants (a crash between load and the database, a closed
    order whose removal failed)."""
    ours = {n for n in names if n.startswith("qx-")}
    if not ours:
        return
    uuids = {n.removeprefix("qx-") for n in ours}
    wanted = {f"qx-{u}" for u in Tunnel.objects.unscoped().filter(
        uuid__in=[u for u in uuids if re.fullmatch(r"[0-9a-f-]{36}", u)],
        state__in=[S.PROVISIONING, S.UP, S.REKEYING, S.DEGRADED]).values_list("uuid", flat=True)}
    for name in ours - wanted:
        log.info("removing orphan tunnel %s from %s", name, gw.node_id)
        with contextlib.suppress(vici_driver.GatewayUnavailable, vici_driver.GatewayError):
            vici_driver.remove(gw.vici_uri, name)


def restore(tunnel: Tunnel) -> int:
    """Re-establish a degraded tunnel with a fresh key (1: it is up again); backoff on failure."""
    remove_everywhere(tunnel)
    try:
        for gw in _sides(tunnel):
            ensure_credentials(gw)  # a restarted charon lost them
        _establish(tunnel, TunnelKeyEvent.Kind.RESTORE)
    except (_Failed, vici_driver.GatewayUnavailable, vici_driver.GatewayError) as exc:
        attempts = tunnel.restore_attempts + 1
        delay = RESTORE_BACKOFF_S[min(attempts, len(RESTORE_BACKOFF_S)) - 1]
        Tunnel.objects.unscoped().filter(pk=tunnel.pk, state=S.DEGRADED).update(
            restore_attempts=attempts, reason=str(exc)[:2000],
            next_attempt_at=timezone.now() + timedelta(seconds=delay))
        return 0
    if orders.advance(tunnel, S.UP, expected=(S.DEGRADED,), reason="", restore_attempts=0,
                      rekey_count=tunnel.rekey_count + 1, **tunnel._established):
        return 1
    remove_everywhere(tunnel)
    return 0


def reconcile() -> dict[str, int]:
    """At start-up (worker, make run): requested orders re-enqueued, provisioning ones that a crash interrupted
    failed cleanly, orphans removed and lost tunnels degraded and restored (``monitor``)."""
    out = {"requeued": 0, "failed": 0}
    for tunnel in Tunnel.objects.unscoped().select_related("tenant").filter(state=S.PROVISIONING):
        remove_everywhere(tunnel)
        out["failed"] += orders.finish(tunnel, S.FAILED, "interrupted while provisioning (portal restart)")
    for tunnel in Tunnel.objects.unscoped().filter(state=S.CLOSING):
        close(tunnel.pk)
    for tunnel in Tunnel.objects.unscoped().filter(state=S.REKEYING):
        Tunnel.objects.unscoped().filter(pk=tunnel.pk, state=S.REKEYING).update(state=S.UP)
    for pk in Tunnel.objects.unscoped().filter(state=S.REQUESTED).values_list("pk", flat=True):
        _task("provision").delay(pk)
        out["requeued"] += 1
    out.update(monitor())
    return out


def maintain() -> dict[str, int]:
    """The periodic hook (every 2 s, ``services.tasks.maintain_orders``): enqueue the due re-keys and one
    monitoring pass; the VICI work runs in those tasks."""
    due = list(Tunnel.objects.unscoped().filter(state=S.UP, next_rekey_at__lte=timezone.now())
               .values_list("pk", flat=True))
    for pk in due:
        _task("rekey").delay(pk)
    if Tunnel.objects.unscoped().filter(state__in=Tunnel.live_states).exists():
        _task("monitor").delay()
    return {"rekeys": len(due)}


# -- close --------------------------------------------------------------------------------------------------
def request_close(tunnel: Tunnel) -> Tunnel:
    """The tenant closes its tunnel: closing now, removal from the gateways in a task."""
    if not tunnel.is_live:
        raise Conflict(f"the tunnel is already {tunnel.state}")
    if tunnel.state == S.REQUESTED:
        orders.finish(tunnel, S.CLOSED, "closed by the tenant before provisioning")
        return tunnel
    expected = (S.PROVISIONING, S.UP, S.REKEYING, S.DEGRADED)
    if orders.advance(tunnel, S.CLOSING, expected=expected):
        transaction.on_commit(lambda: _task("close").delay(tunnel.pk))
    return tunnel


def close(tunnel_pk: int) -> Tunnel:
    """Terminate and unload on both gateways, then finish (the quota slot comes back, the seconds are metered).
    A gateway that cannot be reached now is cleaned by reconciliation (orphan removal) when it returns."""
    tunnel = Tunnel.objects.unscoped().select_related("tenant").get(pk=tunnel_pk)
    errors = remove_everywhere(tunnel)
    reason = "closed by the tenant" + (f" (cleanup pending: {'; '.join(errors)})" if errors else "")
    orders.finish(tunnel, S.CLOSED, reason)
    return tunnel


def expire(tunnel: Tunnel) -> bool:
    """A tunnel past its ``expires_at`` (the order lifecycle's hook): removed from the gateways, then expired."""
    remove_everywhere(tunnel)
    return orders.finish(tunnel, S.EXPIRED, "expired")


# -- probe --------------------------------------------------------------------------------------------------
PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")
RTT_RE = re.compile(r"time=([\d.]+) ms")


def probe(tunnel: Tunnel, count: int = 20, interval_s: float = 0.05) -> dict[str, Any]:
    """A bounded connectivity test between the two tenant hosts (lab gateways only): ``count`` pings (at most
    200, 2 s deadline after the last), RTT p50/p99, and ~1 MB through the tunnel for a throughput figure."""
    if tunnel.state not in (S.UP, S.REKEYING):
        raise Conflict(f"the tunnel is {tunnel.state}: a probe needs it up")
    gw_a, _ = _sides(tunnel)
    if not gw_a.netns:
        raise Conflict("probes run between lab tenant hosts; this gateway is not a lab gateway")
    count = max(1, min(int(count), 200))
    src, dst = _host(tunnel.subnet_a), _host(tunnel.subnet_b)
    deadline = int(count * interval_s + 3)
    out = lab.run(lab.IP, "netns", "exec", gw_a.netns, "ping", "-n", "-c", str(count), "-i", str(interval_s),
                  "-W", "1", "-w", str(deadline), "-I", src, dst, check=False, timeout=deadline + 5).stdout
    sent, received = (int(x) for x in (PING_RE.search(out) or re.match(r"(0)(0)", "00")).groups())
    rtts = sorted(float(x) for x in RTT_RE.findall(out))

    def pct(p: float) -> float | None:
        return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))], 3) if rtts else None

    figures = {"sent": sent, "lost": sent - received, "rtt_p50_ms": pct(0.5), "rtt_p99_ms": pct(0.99),
               "throughput_mbit_s": _throughput(gw_a.netns, _sides(tunnel)[1].netns, src, dst),
               "at": timezone.now().isoformat()}
    Tunnel.objects.unscoped().filter(pk=tunnel.pk).update(probe=figures)
    tunnel.probe = figures
    return figures


def _throughput(netns_a: str, netns_b: str, src: str, dst: str, size: int = 1_000_000) -> float | None:
    """~1 MB over TCP from tenant host A to tenant host B (python sockets inside the namespaces), Mbit/s."""
    if not netns_b:
        return None
    import sys

    server = subprocess.Popen([lab.IP, "netns", "exec", netns_b, sys.executable, "-c",  # noqa: S603
                               _SINK.format(dst=dst)], stdout=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline()
        if not ready.startswith("ready"):
            return None
        out = lab.run(lab.IP, "netns", "exec", netns_a, sys.executable, "-c",
                      _SOURCE.format(src=src, dst=dst, size=size), check=False, timeout=20).stdout.strip()
        return round(size * 8 / float(out) / 1e6, 1) if out else None
    except (ValueError, subprocess.TimeoutExpired):
        return None
    finally:
        server.kill()
        server.wait(timeout=5)


_SINK = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("{dst}", 5201)); s.listen(1)
s.settimeout(15); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(15)
while c.recv(65536): pass
"""
_SOURCE = """
import socket, time
s = socket.create_connection(("{dst}", 5201), timeout=15, source_address=("{src}", 0))
t = time.monotonic(); s.sendall(bytes({size})); s.shutdown(socket.SHUT_WR); s.recv(1); print(time.monotonic() - t)
"""


def gateway_report() -> dict[str, str]:
    """{node_id: status in words} of the nodes' IPsec gateways, for the operators' network page (``*``: every
    node, when none is registered)."""
    gateways = list(IpsecGateway.objects.all())
    if not gateways:
        return {"*": f"unavailable: {unavailable_reason()}"}
    out = {}
    for gw in gateways:
        if not gw.enabled:
            out[gw.node_id] = f"disabled ({gw.address})"
        elif gw.reachable:
            live = Tunnel.objects.unscoped().filter(state__in=Tunnel.live_states).filter(
                Q(node_a=gw.node_id) | Q(node_b=gw.node_id)).count()
            out[gw.node_id] = f"up ({gw.address}), {live} live tunnel{'s' if live != 1 else ''}"
        else:
            out[gw.node_id] = f"unreachable ({gw.address}): {gw.last_error or 'not checked yet'}"
    return out
