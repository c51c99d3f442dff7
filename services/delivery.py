"""Key delivery as a service: ETSI GS QKD 014 semantics for tenants' SAEs, brokered from the backend KMEs.

The rules are the standard's (sizes in bits, multiples of 8, limits from the KME's status, multicast,
mandatory extensions), applied to the tenant's own SAEs: a tenant can only name its own SAEs, and a key ID
is only released to the slave SAE it was issued for. Metering: ``enc_keys`` consumes ``number x size``
key bits once, with an idempotency key derived from the key IDs, in the same transaction as the ledger
row and the key-ID records; a backend failure consumes nothing; ``dec_keys`` is not charged.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from portal.errors import BadRequest, ServiceUnavailable
from tenants import quota
from tenants.models import Tenant

from . import registry
from .models import KeyDelivery, QkdNode, Sae
from .sdqkd.client import DeliveredKey, KmeRejected, KmeUnavailable

METER = "qkd_key_bits"


@dataclass(frozen=True)
class BackendPair:
    master_node: QkdNode
    master_sae: str
    slave_sae: str


def tenant_sae(tenant: Tenant, name: str, role: str) -> Sae:
    """The tenant's SAE called ``name``; another tenant's SAE is indistinguishable from none."""
    sae = Sae.objects.for_tenant(tenant).select_related("node").filter(name=str(name)).first()
    if sae is None:
        raise BadRequest(f"unknown {role} SAE {name!r}")
    sae.tenant = tenant  # the same tenant: saves a query per request (and keeps its cached plan)
    return sae


def backend_pair(master: Sae, slave: Sae) -> BackendPair:
    """Map a pair of tenant SAEs onto the backend SAEs the portal holds at their nodes."""
    master_ids, slave_ids = master.node.backend_sae_ids, slave.node.backend_sae_ids
    if not master_ids or not slave_ids:
        raise ServiceUnavailable("the portal has no SAE identity at one of the nodes; ask the operator")
    if master.node_id == slave.node_id:
        if len(master_ids) < 2:
            raise BadRequest(f"node {master.node.node_id} cannot exchange keys with itself (one backend SAE)")
        return BackendPair(master.node, master_ids[0], master_ids[1])
    return BackendPair(master.node, master_ids[0], slave_ids[0])


def _limits(pair: BackendPair, fresh: bool = False) -> dict[str, Any]:
    return registry.link_status(pair.master_node, pair.master_sae, pair.slave_sae, fresh=fresh)


def status(master: Sae, slave_name: str) -> dict[str, Any]:
    slave = tenant_sae(master.tenant, slave_name, "slave")
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
        "max_SAE_ID_count": backend.get("max_SAE_ID_count", 0),
    }


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer") from None


def validate_key_request(limits: dict[str, Any], number: Any, size: Any, additional: list | None,
                         mandatory: Any) -> tuple[int, int, list[str]]:
    number = 1 if number is None else _int(number, "number")
    size = limits.get("key_size", 256) if size is None else _int(size, "size")
    if number < 1:
        raise BadRequest("number must be at least 1")
    if number > limits.get("max_key_per_request", 1):
        raise BadRequest(f"number exceeds max_key_per_request ({limits.get('max_key_per_request')})")
    if size % 8:
        raise BadRequest("size must be a multiple of 8 (it is in bits)")
    if not limits.get("min_key_size", 8) <= size <= limits.get("max_key_size", 256):
        raise BadRequest(f"size must be between {limits.get('min_key_size')} and {limits.get('max_key_size')} bits")
    additional = additional or []
    if not isinstance(additional, list) or not all(isinstance(x, str | int) for x in additional):
        raise BadRequest("additional_slave_SAE_IDs must be a list of SAE IDs")
    if additional and len(additional) > limits.get("max_SAE_ID_count", 0):
        raise BadRequest(f"too many additional slave SAEs (max_SAE_ID_count is {limits.get('max_SAE_ID_count', 0)})")
    if mandatory:
        if not isinstance(mandatory, list):
            raise BadRequest("extension_mandatory must be a list of objects")
        names = sorted({k for ext in mandatory if isinstance(ext, dict) for k in ext})
        raise BadRequest("unsupported mandatory extension(s)", details=[{"unsupported_extensions": names}])
    return number, size, [str(x) for x in additional]


def _backend_error(exc: Exception, node: QkdNode) -> Exception:
    if isinstance(exc, KmeRejected):
        return BadRequest(f"the KME of {node.node_id} rejected the request: {exc.message}")
    return ServiceUnavailable(f"the KME of {node.node_id} cannot deliver keys now: {exc.message}")


def enc_keys(master: Sae, slave_name: str, *, number: Any = None, size: Any = None,
             additional_slave_sae_ids: list | None = None, extension_mandatory: Any = None) -> dict[str, Any]:
    tenant = master.tenant
    slave = tenant_sae(tenant, slave_name, "slave")
    pair = backend_pair(master, slave)
    number, size, additional = validate_key_request(_limits(pair), number, size, additional_slave_sae_ids,
                                                    extension_mandatory)
    extra_slaves = [tenant_sae(tenant, name, "additional slave") for name in additional]
    backend_extra = [backend_pair(master, s).slave_sae for s in extra_slaves]
    bits = number * size
    quota.check(tenant, METER, bits)  # refuse before taking keys out of the pool
    try:
        keys = registry.client_for(pair.master_node).enc_keys(
            pair.slave_sae, number=number, size=size, additional_slave_sae_ids=backend_extra or None,
            acting_as=pair.master_sae)
    except (KmeRejected, KmeUnavailable) as exc:
        raise _backend_error(exc, pair.master_node) from None
    record_delivery(tenant, master, [slave, *extra_slaves], keys, size,
                    reference=f"etsi014:{master.name}->{slave.name}")
    return {"keys": [_key_json(k) for k in keys]}


def record_delivery(tenant: Tenant, master: Sae, slaves: list[Sae], keys: list[DeliveredKey], size: int,
                    reference: str) -> None:
    """Meter and remember delivered key IDs in one transaction; a quota refusal discards the keys."""
    key_ids = sorted(k.key_id for k in keys)
    idempotency_key = "keys:" + hashlib.sha256(",".join(key_ids).encode()).hexdigest()
    with transaction.atomic():
        quota.consume(tenant, METER, len(keys) * size, idempotency_key, reference=f"{reference}:{len(keys)} keys")
        insert_key_deliveries(tenant, master, slaves, keys, size)


def insert_key_deliveries(tenant: Tenant, master: Sae, slaves: list[Sae], keys: list[DeliveredKey], size: int) -> None:
    """One ``KeyDelivery`` row per key and slave, written with one COPY (PostgreSQL) or one executemany.

    ``bulk_create`` spent most of a 1024-key request building model instances and SQL. The rows are the same
    (every column of the model, defaults for the ones not set here) and the constraints still apply.
    """
    now = timezone.now()
    fields = [f for f in KeyDelivery._meta.concrete_fields if not f.primary_key]
    fixed = {"tenant_id": tenant.pk, "master_id": master.pk, "size_bits": size, "created_at": now, "fetched_at": None}
    defaults = {f.attname: f.get_default() for f in fields
                if f.attname not in fixed and f.attname not in ("key_id", "slave_id", "hops")}
    rows = []
    for key in keys:
        key_id, hops = uuid.UUID(key.key_id), key.hops
        for slave in slaves:
            row = {**fixed, **defaults, "key_id": key_id, "slave_id": slave.pk, "hops": hops}
            rows.append([row[f.attname] for f in fields])
    table = connection.ops.quote_name(KeyDelivery._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            prepared = [[f.get_db_prep_save(v, connection) for f, v in zip(fields, row, strict=True)] for row in rows]
            placeholders = ", ".join(["%s"] * len(fields))
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", prepared)  # noqa: S608


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


def dec_keys(slave: Sae, master_name: str, key_ids: list[str]) -> dict[str, Any]:
    tenant = slave.tenant
    master = tenant_sae(tenant, master_name, "master")
    deliveries = {
        str(d.key_id): d
        for d in KeyDelivery.objects.for_tenant(tenant).filter(key_id__in=key_ids, slave=slave, master=master)
    }
    # Unknown, another tenant's, another SAE's, or already fetched: one answer for all.
    unknown = [k for k in key_ids if k not in deliveries or deliveries[k].fetched_at is not None]
    if unknown:
        raise BadRequest("key IDs not found for this SAE pair", details=[{"key_IDs": unknown}])
    pair = backend_pair(master, slave)
    try:
        keys = registry.client_for(slave.node).dec_keys(pair.master_sae, key_ids, acting_as=pair.slave_sae)
    except (KmeRejected, KmeUnavailable) as exc:
        raise _backend_error(exc, slave.node) from None
    KeyDelivery.objects.for_tenant(tenant).filter(pk__in=[d.pk for d in deliveries.values()]).update(
        fetched_at=timezone.now())
    return {"keys": [_key_json(k) for k in keys]}


def _key_json(key: DeliveredKey) -> dict[str, Any]:
    out: dict[str, Any] = {"key_ID": key.key_id, "key": key.key}
    if key.key_id_extension:
        out["key_ID_extension"] = key.key_id_extension
    return out
