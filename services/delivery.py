"""Key delivery as a service: ETSI GS QKD 014 semantics for tenants' SAEs, brokered from the backend KMEs.

The rules are the standard's (sizes in bits, multiples of 8, limits from the KME's status, multicast,
mandatory extensions), applied to the tenant's own SAEs: a tenant can only name its own SAEs, and a key ID
is only released to the slave SAE it was issued for. Metering: ``enc_keys`` consumes ``number x size``
key bits once, with an idempotency key derived from the key IDs, in the same transaction as the ledger
row and the key-ID records; a backend failure consumes nothing; ``dec_keys`` is not charged.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connection
from django.db.models import F
from django.utils import timezone

from portal.errors import BadRequest, ServiceUnavailable, Unauthorized
from tenants import quota
from tenants.meters import KEY_BITS
from tenants.models import Tenant, UsageRecord

from . import keyids, registry
from .models import KeyDelivery, QkdNode, Sae
from .saes import BackendPair, backend_pair, multicast_backend_saes, tenant_sae
from .sdqkd import etsi014_spec as etsi014
from .sdqkd.client import DeliveredKey, KmeRejected, KmeUnavailable

logger = logging.getLogger(__name__)
METER = KEY_BITS
# The portal brokers plain keys: it honours no mandatory extension of its own.
SUPPORTED_MANDATORY_EXTENSIONS: frozenset[str] = frozenset()
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
UUID_LIST_RE = re.compile(rf"(?:{UUID_RE.pattern},)*{UUID_RE.pattern}")  # comma-separated: one regex call a batch


def _limits(pair: BackendPair, fresh: bool = False) -> dict[str, Any]:
    return registry.link_status(pair.master_node, pair.master_sae, pair.slave_sae, fresh=fresh)


def _other_sae(master: Sae, slave_name: str) -> Sae:
    slave = tenant_sae(master.tenant, slave_name, "slave")
    if slave.pk == master.pk:
        raise BadRequest("master and slave SAE must differ", details=[{"slave_SAE_ID": slave.name}])
    return slave


def status(master: Sae, slave_name: str) -> dict[str, Any]:
    slave = _other_sae(master, slave_name)
    pair = backend_pair(master, slave)
    backend = _limits(pair, fresh=True)  # status is the call that asks for live counts
    return {
        "source_KME_ID": master.node.node_id,
        "target_KME_ID": slave.node.node_id,
        "master_SAE_ID": master.name,
        "slave_SAE_ID": slave.name,
        "key_size": backend.get("key_size", 256),
        "stored_key_count": backend.get("stored_key_count", 0),
        "max_key_count": backend.get("max_key_count", 0),
        "max_key_per_request": backend.get("max_key_per_request", 1),
        "max_key_size": backend.get("max_key_size", 256),
        "min_key_size": backend.get("min_key_size", 8),
        "max_SAE_ID_count": min(backend.get("max_SAE_ID_count", 0), _multicast_room(master, slave, pair)),
    }


def _multicast_room(master: Sae, slave: Sae, pair: BackendPair) -> int:
    """How many additional slaves this master could name with this slave now: each needs a tenant SAE of its
    own and a portal SAE identity at its node that the master and the slave do not use already
    (``multicast_backend_saes``). What status advertises is what enc_keys then accepts."""
    used = {(pair.master_node.pk, pair.master_sae), (slave.node_id, pair.slave_sae)}
    per_node: dict[int, list[int]] = {}
    others = Sae.objects.for_tenant(master.tenant).exclude(pk__in=[master.pk, slave.pk]).select_related("node")
    for sae in others:
        per_node.setdefault(sae.node_id, [0, len([b for b in sae.node.backend_sae_ids
                                                  if (sae.node_id, b) not in used])])[0] += 1
    return sum(min(saes, identities) for saes, identities in per_node.values())


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer") from None


def validate_key_request(limits: dict[str, Any], number: Any, size: Any, additional: Any,
                         mandatory: Any) -> tuple[int, int, list[str]]:
    """The ETSI 014 rules for a key request against the link's limits (``null`` is absent: ``etsi014_spec``)."""
    try:
        fields = etsi014.key_request_fields({"number": number, "size": size, "additional_slave_SAE_IDs": additional,
                                             "extension_mandatory": mandatory})
    except etsi014.Etsi014Error as exc:
        raise BadRequest(exc.message, details=exc.details) from None
    number = 1 if fields.number is None else _int(fields.number, "number")
    size = limits.get("key_size", 256) if fields.size is None else _int(fields.size, "size")
    if size % 8:
        raise BadRequest(etsi014.SIZE_NOT_MULTIPLE_OF_8, details=[{"size": size}])
    unsupported = etsi014.unsupported_mandatory(fields.extension_mandatory, SUPPORTED_MANDATORY_EXTENSIONS)
    if unsupported:
        raise BadRequest(etsi014.EXTENSION_UNSUPPORTED, details=[{etsi014.EXTENSION_UNSUPPORTED_KEY: unsupported}])
    if number < 1:
        raise BadRequest("number must be at least 1")
    if number > limits.get("max_key_per_request", 1):
        raise BadRequest(f"number exceeds max_key_per_request ({limits.get('max_key_per_request')})")
    if not limits.get("min_key_size", 8) <= size <= limits.get("max_key_size", 256):
        raise BadRequest(f"size must be between {limits.get('min_key_size')} and {limits.get('max_key_size')} bits")
    additional = fields.additional_slave_SAE_IDs
    if additional and len(additional) > limits.get("max_SAE_ID_count", 0):
        raise BadRequest(f"too many additional slave SAEs (max_SAE_ID_count is {limits.get('max_SAE_ID_count', 0)})")
    return number, size, additional


def backend_error(exc: Exception, node: QkdNode) -> Exception:
    # The KME's own words are for operators and the log (with the request ID): they may name its key IDs, its
    # address or the portal's backend SAEs. Tenants get a stable code and the request ID.
    if isinstance(exc, KmeRejected):
        return BadRequest(f"the KME of {node.node_id} rejected the request", code="kme_rejected",
                          internal=exc.message)
    return ServiceUnavailable(f"the KME of {node.node_id} cannot deliver keys now; nothing was charged",
                              code="kme_unavailable", internal=exc.message)


@dataclass(frozen=True)
class KeyOrder:
    """An ``enc_keys`` request checked against the ETSI rules, the tenant's SAEs and its quota: what to ask
    the master node's KME for (``ask``), then ``deliver`` with what it gave. Sync callers use ``enc_keys``;
    the async gateway (``services.gateway``) calls the KME itself between the two steps."""

    master: Sae
    slaves: list[Sae]
    pair: BackendPair
    number: int
    size: int
    backend_slaves: list[str]
    reservation: quota.Reservation  # the bits held in the tenant's quota until deliver() settles them

    def ask(self) -> dict[str, Any]:
        """The keyword arguments of the KME client's ``enc_keys`` (after the backend slave SAE)."""
        return {"number": self.number, "size": self.size, "additional_slave_sae_ids": self.backend_slaves[1:] or None,
                "acting_as": self.pair.master_sae}


def order_keys(master: Sae, slave_name: str, *, number: Any = None, size: Any = None,
               additional_slave_sae_ids: list | None = None, extension_mandatory: Any = None) -> KeyOrder:
    tenant = master.tenant
    slave = _other_sae(master, slave_name)
    pair = backend_pair(master, slave)
    number, size, additional = validate_key_request(_limits(pair), number, size, additional_slave_sae_ids,
                                                    extension_mandatory)
    extra_slaves = [tenant_sae(tenant, name, "additional slave") for name in additional]
    if len({s.pk for s in (master, slave, *extra_slaves)}) != 2 + len(extra_slaves):
        raise BadRequest("additional_slave_SAE_IDs must name other SAEs than the master, the slave and each other",
                         details=[{"additional_slave_SAE_IDs": additional}])
    slaves = [slave, *extra_slaves]
    backend_slaves = multicast_backend_saes(pair, slaves)
    # Hold the bits in the quota before any key leaves the pool: parallel requests at the limit never take
    # more key from a KME (which other tenants share) than the quota allows.
    reservation = quota.reserve(tenant, METER, number * size)
    return KeyOrder(master, slaves, pair, number, size, backend_slaves, reservation)


def abandon(order: KeyOrder) -> None:
    """The KME did not deliver: give the held bits back."""
    quota.release_reservation(order.reservation)


def deliver(order: KeyOrder, keys: list[DeliveredKey]) -> dict[str, Any]:
    """Meter and record the keys the KME gave for ``order``; the key container with the tenant's key IDs."""
    try:
        if len(keys) > order.number:
            raise ServiceUnavailable(f"the KME returned {len(keys)} keys for {order.number}; nothing was charged")
        delivered = Delivery(order.master, order.slaves, keys, order.backend_slaves)
        record_deliveries(order.master.tenant, [delivered], order.size, reservation=order.reservation,
                          reference=f"etsi014:{order.master.name}->{order.slaves[0].name}")
    except BaseException:
        abandon(order)  # a no-op once settled
        raise
    return {"keys": key_container(keys, delivered.key_ids())}


def enc_keys(master: Sae, slave_name: str, *, number: Any = None, size: Any = None,
             additional_slave_sae_ids: list | None = None, extension_mandatory: Any = None) -> dict[str, Any]:
    order = order_keys(master, slave_name, number=number, size=size, additional_slave_sae_ids=additional_slave_sae_ids,
                       extension_mandatory=extension_mandatory)
    try:
        keys = registry.client_for(order.pair.master_node).enc_keys(order.pair.slave_sae, **order.ask())
    except BaseException as exc:
        abandon(order)
        if isinstance(exc, KmeRejected | KmeUnavailable):
            raise backend_error(exc, order.pair.master_node) from None
        raise
    return deliver(order, keys)


@dataclass(frozen=True)
class Delivery:
    """Keys one master SAE took from the backend for its slave SAE(s), not yet metered or recorded.

    ``backend_slaves``: the backend SAE each slave gets the keys as (default: the usual pairing). ``batch``:
    the number the tenant's key IDs seal (``services.keyids``)."""

    master: Sae
    slaves: list[Sae]
    keys: list[DeliveredKey]
    backend_slaves: list[str] | None = None
    batch: int = field(default_factory=keyids.new_batch)

    def key_ids(self) -> list[str]:
        """The key IDs the tenant gets for these keys (the KME's own IDs stay in the portal)."""
        return keyids.seal(self.batch, len(self.keys))


def record_deliveries(tenant: Tenant, deliveries: list[Delivery], size: int, reference: str,
                      reservation: quota.Reservation | None = None,
                      order_id: uuid.UUID | None = None) -> UsageRecord:
    """Meter all the keys of ``deliveries`` as one usage (one ledger row, idempotency key from every key ID of
    the KMEs) and record them (one row per delivery and slave), in one transaction: all or nothing. With a
    ``reservation`` (held before the KMEs were asked) the bits are settled from it; without, consumed now.

    A malformed key ID from the KME (it goes into the database) fails before anything is recorded: the keys
    are then neither handed out nor charged."""
    # Lower case: the packed IDs come back lower case, and dec_keys matches the KME's answer against them.
    key_ids = sorted([k.key_id.lower() for d in deliveries for k in d.keys])
    joined = ",".join(key_ids)
    # Every ID a UUID: the joined list matches and is exactly as long as len(key_ids) UUIDs and their commas.
    if key_ids and (len(key_ids) != len(set(key_ids)) or len(joined) != 37 * len(key_ids) - 1
                    or not UUID_LIST_RE.fullmatch(joined)):
        raise ServiceUnavailable("the KME returned malformed or repeated key IDs; nothing was charged")
    idempotency_key = "keys:" + hashlib.sha256(joined.encode()).hexdigest()

    def insert_rows(_record) -> None:
        insert_key_deliveries(tenant, deliveries, size)

    # The key-ID rows go in inside consume's transaction (after the ledger row), so counters, ledger row and
    # key IDs commit together or not at all, in one transaction without a savepoint.
    reference = f"{reference}:{len(key_ids)} keys"
    if reservation is not None:
        record = quota.settle(reservation, len(key_ids) * size, idempotency_key, reference, then=insert_rows,
                              order_id=order_id)
    else:
        record = quota.consume(tenant, METER, len(key_ids) * size, idempotency_key, reference=reference,
                               then=insert_rows, order_id=order_id)
    if record.replayed:  # these key IDs were delivered (and charged) before: never hand a key out twice
        raise ServiceUnavailable("the KME returned keys that were delivered before; nothing was charged")
    return record


# -- the one call for a metered key pair, for portal services ---------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    """A QKD key shared by two of a tenant's SAEs, as a portal service (IPsec, TLS) obtains it.

    ``key_id`` is the tenant's sealed key ID (safe to store and show); ``key`` and ``peer_key`` are key
    material: never logged, stored or put in a URL (they are left out of ``repr``)."""

    key_id: str
    key: bytes = field(repr=False)
    peer_key: bytes | None = field(repr=False)
    size: int
    hops: int


def take_key(tenant: Tenant, master: Sae, slave: Sae, size: Any = 256, *, reference: str = "",
             order_id: uuid.UUID | None = None, peer: bool = True) -> KeyPair:
    """One fresh key between two of ``tenant``'s SAEs, metered (``size`` bits of ``qkd_key_bits``, one ledger
    row carrying ``order_id``), without an HTTP view in between: the master's copy from the master's KME
    (relayed by trusted nodes when the SAEs' nodes are not neighbours) and, with ``peer``, the slave's copy
    from the slave's KME, checked to be the same key.

    Raises ``QuotaExceeded`` before any key leaves a KME, ``BadRequest`` for a size the link refuses,
    ``ServiceUnavailable`` when a KME cannot deliver. Nothing is charged unless a usable key comes back: a
    failed peer fetch gives the bits back."""
    if tenant.pk is None or master.tenant_id != tenant.pk or slave.tenant_id != tenant.pk:
        raise BadRequest("both SAEs must belong to the tenant")
    if master.pk == slave.pk:
        raise BadRequest("master and slave SAE must differ", details=[{"slave_SAE_ID": slave.name}])
    master.tenant = slave.tenant = tenant
    pair = backend_pair(master, slave)
    _, size, _ = validate_key_request(_limits(pair), 1, size, None, None)
    reservation = quota.reserve(tenant, METER, size)
    try:
        try:
            keys = registry.client_for(pair.master_node).enc_keys(pair.slave_sae, number=1, size=size,
                                                                  acting_as=pair.master_sae)
        except (KmeRejected, KmeUnavailable) as exc:
            raise backend_error(exc, pair.master_node) from None
        if len(keys) != 1:
            raise ServiceUnavailable(f"the KME of {pair.master_node.node_id} returned {len(keys)} keys for one")
        delivered = Delivery(master, [slave], keys)
        record = record_deliveries(tenant, [delivered], size, reference or f"take-key:{master.name}->{slave.name}",
                                   reservation=reservation, order_id=order_id)
    except BaseException:
        quota.release_reservation(reservation)  # a no-op once settled
        raise
    key_id = delivered.key_ids()[0]
    key = base64.b64decode(keys[0].key)
    peer_key = None
    if peer:
        try:
            peer_key = base64.b64decode(dec_keys(slave, master.name, [key_id])["keys"][0]["key"])
            if peer_key != key:
                raise ServiceUnavailable("the two KMEs returned different keys for one key ID; nothing was charged")
        except Exception:
            quota.release(tenant, METER, size, f"refund:{record.idempotency_key}", consumed_at=record.created_at,
                          reference=f"{reference or 'take-key'}: peer copy not delivered", order_id=order_id)
            raise
    return KeyPair(key_id, key, peer_key, size, keys[0].hops or 1)


# -- per-hop extraction ------------------------------------------------------------------------------------
def link_path(source: QkdNode, destination: QkdNode) -> list[str]:
    """The nodes of a fewest-hops path of QKD links that are up, from the network's link telemetry.

    Ties go to the alphabetically first neighbour, so the same network gives the same path. The KMEs' own
    relay routing may pick another path of the same length for an end-to-end key (they weigh key stock)."""
    if source.pk == destination.pk:
        raise BadRequest("per-hop extraction needs two different nodes")
    try:
        topology = registry.client_for(source).topology()
    except (KmeRejected, KmeUnavailable) as exc:
        raise ServiceUnavailable(
            f"the KME of {source.node_id} exposes no link topology, which per-hop extraction needs; "
            "use mode=end-to-end", code="kme_unavailable", internal=exc.message) from None
    neighbours: dict[str, set[str]] = {}
    for link in topology.get("links", []) if isinstance(topology, dict) else []:
        ends = link.get("endpoints") if isinstance(link, dict) else None
        if link.get("state", "up") != "up" or not isinstance(ends, list) or len(ends) != 2:
            continue
        a, b = (str(e) for e in ends)
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    previous: dict[str, str | None] = {source.node_id: None}
    frontier = [source.node_id]
    while frontier and destination.node_id not in previous:
        following = []
        for node in frontier:
            for peer in sorted(neighbours.get(node, ())):
                if peer not in previous:
                    previous[peer] = node
                    following.append(peer)
        frontier = following
    if destination.node_id not in previous:
        raise ServiceUnavailable(f"no path of QKD links that are up from {source.node_id} to "
                                 f"{destination.node_id}")
    path = [destination.node_id]
    while (step := previous[path[-1]]) is not None:
        path.append(step)
    return path[::-1]


def per_hop_keys(tenant: Tenant, src: Sae, dst: Sae, size: Any,
                 sae_at_node: Callable[[str], Sae]) -> dict[str, Any]:
    """One fresh key per QKD link along the path from ``src``'s node to ``dst``'s node, each between the
    tenant's SAEs at the link's two ends (``sae_at_node(node_id)`` names them; ``src``/``dst`` at the ends).

    Each hop key is an ordinary direct-link ETSI 014 delivery (the peer copy by key ID, as usual), so the
    tenant sees every link key, which is what a tenant running its own key relay or studying the links needs.
    All hops or none: the keys are taken from every hop's KME first, then metered (hops x size bits) and
    recorded in one transaction; a KME failure on any hop charges nothing."""
    path = link_path(src.node, dst.node)
    saes_on_path = [src, *(sae_at_node(node_id) for node_id in path[1:-1]), dst]
    hops = []
    for master, slave in itertools.pairwise(saes_on_path):
        master.tenant = slave.tenant = tenant
        pair = backend_pair(master, slave)
        _, hop_size, _ = validate_key_request(_limits(pair), 1, size, None, None)
        hops.append((master, slave, pair, hop_size))
    size = hops[0][3]
    reservation = quota.reserve(tenant, METER, size * len(hops))  # held before any hop takes key from a link
    taken = []
    try:
        for master, slave, pair, _ in hops:
            try:
                keys = registry.client_for(pair.master_node).enc_keys(pair.slave_sae, number=1, size=size,
                                                                      acting_as=pair.master_sae)
            except (KmeRejected, KmeUnavailable) as exc:
                raise backend_error(exc, pair.master_node) from None
            taken.append(Delivery(master, [slave], keys))
        record_deliveries(tenant, taken, size, reference=f"simple-per-hop:{src.name}->{dst.name}",
                          reservation=reservation)
    except BaseException:
        quota.release_reservation(reservation)  # a no-op once settled
        raise
    return {
        "mode": "per-hop", "size": size, "src": src.name, "dst": dst.name, "path": path, "hops": len(hops),
        "keys": [{"from": d.master.node.node_id, "to": d.slaves[0].node.node_id, "src": d.master.name,
                  "dst": d.slaves[0].name, "key_ID": d.key_ids()[0], "key": d.keys[0].key,
                  "hops": d.keys[0].hops or 1} for d in taken],
    }


_INSERT_COLUMNS = ("tenant_id", "batch", "master_id", "slave_id", "size_bits", "key_count", "backend_key_ids",
                   "hops", "backend_slave_sae", "created_at", "fetched_keys")


def insert_key_deliveries(tenant: Tenant, deliveries: list[Delivery], size: int) -> None:
    """One ``KeyDelivery`` row per delivery and slave: the KME's key IDs packed 16 bytes each.

    Plain SQL (one statement whatever the number of keys): the ORM's ``bulk_create`` cost more CPU than the
    database spent on the row. The KME's key IDs must be validated UUID strings (``record_deliveries``)."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    rows = []
    for d in deliveries:
        packed = keyids.pack_backend_ids(",".join([k.key_id for k in d.keys]))  # fromhex takes either case
        hops = d.keys[0].hops if d.keys else 0  # a request's keys travel one route
        backend_slaves = d.backend_slaves or [backend_pair(d.master, slave).slave_sae for slave in d.slaves]
        for slave, backend_slave in zip(d.slaves, backend_slaves, strict=True):
            rows.append([tenant.pk, d.batch, d.master.pk, slave.pk, size, len(d.keys), packed, hops,
                         backend_slave, now, 0])
    table = connection.ops.quote_name(KeyDelivery._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(KeyDelivery._meta.get_field(name.removesuffix("_id")).column)
                        for name in _INSERT_COLUMNS)
    row_marks = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ")"
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([row_marks] * len(rows))}",  # noqa: S608
                       [value for row in rows for value in row])


def parse_key_ids(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("key_IDs must be a non-empty list of {\"key_ID\": <UUID>}")
    ids = []
    for item in raw:
        value = item.get("key_ID") if isinstance(item, dict) else item
        try:
            ids.append(str(uuid.UUID(str(value))))
        except ValueError:
            raise BadRequest(f"key_ID {str(value)[:64]!r} is not a UUID") from None
    if len(set(ids)) != len(ids):
        raise BadRequest("key_IDs contains duplicates")
    return ids


def _not_found(key_ids: list[str]) -> BadRequest:
    # Unknown, made up, another tenant's, another master's or already fetched: one answer for all.
    return BadRequest(etsi014.KEYS_NOT_FOUND, details=[{"key_IDs": key_ids}])


@dataclass(frozen=True)
class KeyFetch:
    """A ``dec_keys`` request whose key IDs were found among the slave's deliveries from that master: which
    KME key IDs to ask the slave node's KME for, as which backend SAE (``by_backend``), then ``fetched``."""

    slave: Sae
    pair: BackendPair
    key_ids: list[str]
    backend_ids: list[str]  # the KME's ID of each of key_ids
    by_backend: dict[str, list[str]]
    rows: dict[int, int]  # delivery row pk -> keys fetched from it

    def failed(self, exc: Exception) -> Exception:
        """The portal's error for a KME failure of this fetch."""
        if isinstance(exc, KmeRejected):
            # Most likely fetched before (the KME hands a key to its slave once). The KME's message names its
            # own key IDs, which stay in the portal.
            return _not_found(self.key_ids)
        return backend_error(exc, self.slave.node)


def fetch_order(slave: Sae, master_name: str, key_ids: list[str]) -> KeyFetch:
    tenant = slave.tenant
    master = tenant_sae(tenant, master_name, "master")
    opened = keyids.open_ids(key_ids)
    rows = {row.batch: row for row in KeyDelivery.objects.for_tenant(tenant).filter(
        batch__in={o[0] for o in opened if o}, slave=slave, master=master).values_list(
        "batch", "pk", "backend_key_ids", "key_count", "backend_slave_sae", "fetched_keys", named=True)}

    def found(o: tuple[int, int] | None) -> bool:
        # A row of this pair whose keys are not all fetched yet (refused here too, whatever the KME would say).
        row = rows.get(o[0]) if o else None
        return row is not None and o[1] < row.key_count and row.fetched_keys < row.key_count

    unknown = [(k, o) for k, o in zip(key_ids, opened, strict=True) if not found(o)]
    if unknown:
        # Keys the master took for another of the tenant's SAEs: the standard's 401 (014 Table 7). Another
        # tenant's keys stay indistinguishable from unknown ones.
        others = set(KeyDelivery.objects.for_tenant(tenant).filter(
            batch__in={o[0] for _, o in unknown if o}, master=master).exclude(slave=slave).values_list(
            "batch", flat=True))
        not_yours = [k for k, o in unknown if o and o[0] in others and o[0] not in rows]
        if not_yours:
            raise Unauthorized("key not issued for the calling SAE", details=[{"key_IDs": not_yours}])
        raise _not_found([k for k, _ in unknown])
    pair = backend_pair(master, slave)
    # Each key is fetched as the backend SAE it was delivered to (a multicast slave may have had another one).
    by_backend: dict[str, list[str]] = {}
    backend_ids = []
    per_row: dict[int, int] = {}
    for batch, index in opened:
        row = rows[batch]
        backend_ids.append(keyids.backend_id(row.backend_key_ids, index))
        by_backend.setdefault(row.backend_slave_sae or pair.slave_sae, []).append(backend_ids[-1])
        per_row[row.pk] = per_row.get(row.pk, 0) + 1
    return KeyFetch(slave, pair, key_ids, backend_ids, by_backend, per_row)


def fetched(fetch: KeyFetch, keys: list[DeliveredKey]) -> dict[str, Any]:
    """The key container for what the slave's KME returned for ``fetch`` (marked fetched on its rows)."""
    by_id = {k.key_id.lower(): k for k in keys}
    ordered = [by_id[b] for b in fetch.backend_ids if b in by_id]
    if len(ordered) != len(fetch.key_ids):
        raise ServiceUnavailable(f"the KME of {fetch.slave.node.node_id} returned other keys than the ones asked for")
    try:
        for pk, n in fetch.rows.items():
            KeyDelivery.objects.for_tenant(fetch.slave.tenant).filter(pk=pk).update(
                fetched_keys=F("fetched_keys") + n)
    except DatabaseError:
        # The KME has handed the keys over (and forgotten them): a failed count must not lose them.
        logger.exception("could not count %d fetched keys on their delivery rows", len(ordered))
    return {"keys": key_container(ordered, fetch.key_ids)}


def dec_keys(slave: Sae, master_name: str, key_ids: list[str]) -> dict[str, Any]:
    fetch = fetch_order(slave, master_name, key_ids)
    keys: list[DeliveredKey] = []
    try:
        for backend_slave, ids in fetch.by_backend.items():
            keys += registry.client_for(slave.node).dec_keys(fetch.pair.master_sae, ids, acting_as=backend_slave)
    except (KmeRejected, KmeUnavailable) as exc:
        raise fetch.failed(exc) from None
    return fetched(fetch, keys)


def peer_key(tenant: Tenant, key_id: str) -> tuple[KeyDelivery, dict[str, Any]]:
    """The peer copy of one key the tenant took through the simple REST call, for its slave side:
    the delivery row (master, slave, size, hops) and the key object."""
    ids = parse_key_ids([key_id])
    opened = keyids.open_ids(ids)[0]
    record = None if opened is None else KeyDelivery.objects.for_tenant(tenant).select_related(
        "master", "slave", "slave__node").filter(batch=opened[0]).order_by("pk").first()
    if record is None:
        raise BadRequest("key ID not found")
    record.slave.tenant = tenant
    return record, dec_keys(record.slave, record.master.name, ids)["keys"][0]


def key_container(keys: list[DeliveredKey], key_ids: list[str]) -> list[dict[str, Any]]:
    """The ETSI 014 key objects with the tenant's key IDs: key_ID, key and, when the KME gave one,
    key_ID_extension."""
    return [{"key_ID": kid, "key": k.key, "key_ID_extension": k.key_id_extension} if k.key_id_extension
            else {"key_ID": kid, "key": k.key} for k, kid in zip(keys, key_ids, strict=True)]
