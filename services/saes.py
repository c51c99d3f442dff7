"""Tenants' SAEs: registration on a node, client certificates from the portal CA (bundle shown once), and how
a pair of them maps onto the SAE identities the portal holds at the backend KMEs (ETSI 014 and 004 alike)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from portal.errors import BadRequest, Conflict, ServiceUnavailable
from tenants.models import Tenant

from . import identities, pki, registry
from .models import KeyDelivery, KeyStream, QkdNode, Sae


@dataclass(frozen=True)
class SaeBundle:
    sae: Sae
    certificate: str
    private_key: str
    ca_chain: str

    @property
    def pem(self) -> str:
        return self.certificate + self.private_key + self.ca_chain


def _issue(sae: Sae) -> SaeBundle:
    issued = pki.issue_sae_certificate(sae.tenant.slug, sae.name)
    Sae.objects.for_tenant(sae.tenant).filter(pk=sae.pk).update(
        cert_serial=issued.serial_hex, cert_fingerprint=issued.fingerprint_sha256, cert_not_after=issued.not_after,
        cert_issued_at=timezone.now())
    identities.changed()  # the old certificate's cached identity goes on every key gateway process
    sae.cert_serial, sae.cert_fingerprint = issued.serial_hex, issued.fingerprint_sha256
    sae.cert_not_after = issued.not_after
    return SaeBundle(sae, issued.cert_pem, issued.key_pem, pki.ca_pem())


# An SAE ID travels in URLs (/api/v1/keys/<SAE_ID>/enc_keys), headers (X-SAE-ID) and a certificate's CN.
SAE_NAME_MAX = 64
SAE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
DESCRIPTION_MAX = 200


def validate_sae_name(name: str) -> str:
    """The SAE name, or ``BadRequest``: the one rule for the API and the web form."""
    if not isinstance(name, str) or not SAE_NAME_RE.fullmatch(name) or len(name) > SAE_NAME_MAX:
        raise BadRequest(
            f"an SAE name is 1 to {SAE_NAME_MAX} letters, digits, '-' or '_', starting with a letter or digit",
            details={"max_length": SAE_NAME_MAX, "pattern": SAE_NAME_RE.pattern},
        )
    return name


def register_sae(tenant: Tenant, name: str, node_id: str, description: str = "",
                 with_certificate: bool = True) -> SaeBundle | Sae:
    """Register an SAE (and issue its certificate in the same transaction: no SAE without its certificate)."""
    validate_sae_name(name)
    if len(description) > DESCRIPTION_MAX:
        raise BadRequest(f"the description is at most {DESCRIPTION_MAX} characters")
    node = registry.node(node_id)
    try:
        with transaction.atomic():
            sae = Sae.objects.create(tenant=tenant, name=name, node=node, description=description)
            return _issue(sae) if with_certificate else sae  # a failure here rolls the row back
    except IntegrityError:
        raise Conflict(f"an SAE called {name!r} already exists in this tenant") from None


def reissue_certificate(sae: Sae) -> SaeBundle:
    """A new certificate; the old one stops authenticating at once (authentication matches the serial)."""
    return _issue(sae)


def revoke_certificate(sae: Sae) -> None:
    Sae.objects.for_tenant(sae.tenant).filter(pk=sae.pk).update(cert_serial="", cert_fingerprint="")
    identities.changed()
    sae.cert_serial = sae.cert_fingerprint = ""


def delete_sae(sae: Sae) -> None:
    """Delete an SAE that nothing on record refers to; otherwise ``Conflict`` (revoke its certificate instead).

    Delivered key IDs and key streams are the metering trail of the tenant's usage: they keep their SAE."""
    deliveries = KeyDelivery.objects.for_tenant(sae.tenant)
    streams = KeyStream.objects.for_tenant(sae.tenant)
    if deliveries.filter(master=sae).exists() or deliveries.filter(slave=sae).exists():
        raise Conflict("this SAE has delivered keys on record; revoke its certificate instead",
                       details={"sae": sae.name, "refers": "key deliveries"})
    if streams.filter(source=sae).exists() or streams.filter(destination=sae).exists():
        raise Conflict("this SAE has key streams on record; revoke its certificate instead",
                       details={"sae": sae.name, "refers": "key streams"})
    try:
        with transaction.atomic():
            Sae.objects.for_tenant(sae.tenant).filter(pk=sae.pk).delete()
    except ProtectedError:  # a key or a stream was delivered to it meanwhile
        raise Conflict("this SAE is in use; revoke its certificate instead", details={"sae": sae.name}) from None


# The two look-ups of every key request, in plain SQL with the rows made into model instances (``from_db``):
# the ORM's query building cost more CPU than the database spent answering (ms per request on the benchmark
# machine). The column lists come from the models, so a new field is picked up here too.
@cache
def _sae_query(where: str, with_tenant: bool, vendor: str) -> tuple[str, list[tuple]]:
    """The SQL of a look-up, built once per process, and per model joined: (model, fields, converters), the
    converters being what the ORM applies to each column (JSON, SQLite's datetimes)."""
    qn = connection.ops.quote_name
    models = [(Sae, "s"), (QkdNode, "n"), *([(Tenant, "t")] if with_tenant else [])]
    plan, columns = [], []
    for model, alias in models:
        fields = list(model._meta.concrete_fields)
        cols = [field.get_col(model._meta.db_table) for field in fields]
        plan.append((model, fields, [(connection.ops.get_db_converters(col) + field.get_db_converters(connection),
                                      col) for field, col in zip(fields, cols, strict=True)]))
        columns += [f"{alias}.{qn(field.column)}" for field in fields]
    sql = (f"SELECT {', '.join(columns)} FROM {qn(Sae._meta.db_table)} s "  # noqa: S608 - names from the models
           f"JOIN {qn(QkdNode._meta.db_table)} n ON n.id = s.node_id "
           + (f"JOIN {qn(Tenant._meta.db_table)} t ON t.id = s.tenant_id " if with_tenant else "") + where)
    return sql, plan


def _sae_row(where: str, params: list, with_tenant: bool) -> tuple | None:
    sql, _plan = _sae_query(where, with_tenant, connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _sae_of_row(row: tuple | None, tenant: Tenant | None) -> Sae | None:
    """Fresh model instances of a row of ``_sae_query`` (each call its own: a cached row is never shared)."""
    if row is None:
        return None
    _sql, plan = _sae_query("", tenant is None, connection.vendor)  # the plan does not depend on the WHERE
    instances, start = [], 0
    for model, fields, converters in plan:
        values = list(row[start:start + len(fields)])
        start += len(fields)
        for i, (convert_all, col) in enumerate(converters):
            for convert in convert_all:
                values[i] = convert(values[i], col, connection)
        instances.append(model.from_db(connection.alias, [f.attname for f in fields], values))
    sae, sae.node = instances[0], instances[1]
    sae.tenant = tenant if tenant is not None else instances[2]
    return sae


def _one_sae(where: str, params: list, tenant: Tenant | None) -> Sae | None:
    return _sae_of_row(_sae_row(where, params, tenant is None), tenant)


SERIAL_WHERE = "WHERE s.cert_serial = %s LIMIT 1"


def sae_row_for_certificate_serial(serial_hex: str) -> tuple | None:
    """The database row behind ``sae_for_certificate_serial`` (what ``services.identities`` caches)."""
    return _sae_row(SERIAL_WHERE, [serial_hex], True) if serial_hex else None


def sae_of_certificate_row(row: tuple | None) -> Sae | None:
    return _sae_of_row(row, None)


def cached_sae_for_certificate_serial(serial_hex: str | None) -> Sae | None:
    """``sae_for_certificate_serial`` through the key gateway's identity cache (``services.identities``: dropped
    on every process when an identity changes); fresh model instances each time, never shared."""
    if not serial_hex:
        return None
    return sae_of_certificate_row(identities.row(serial_hex, sae_row_for_certificate_serial))


def sae_for_certificate_serial(serial_hex: str) -> Sae | None:
    """The SAE whose current certificate has this serial (authentication decides the tenant from it), with its
    node and tenant, in one query."""
    return sae_of_certificate_row(sae_row_for_certificate_serial(serial_hex))


def tenant_sae_named(tenant: Tenant, name: str) -> Sae | None:
    """The tenant's SAE called ``name`` with its node, in one query (``tenant`` set on it: no query for it)."""
    return _one_sae("WHERE s.tenant_id = %s AND s.name = %s", [tenant.pk, str(name)], tenant)


def default_sae(tenant: Tenant, node_id: str) -> Sae:
    """The tenant's SAE at ``node_id`` for the simple REST API: its first one, or one created for it."""
    node = registry.node(node_id)
    sae = Sae.objects.for_tenant(tenant).filter(node=node).order_by("created_at").first()
    if sae is not None:
        return sae
    name = re.sub(r"[^a-z0-9_-]", "-", f"node-{node.node_id.lower()}")[:SAE_NAME_MAX]  # a valid SAE name
    existing = Sae.objects.for_tenant(tenant).filter(name=name).first()
    return existing or register_sae(tenant, name, node.node_id, "created for the simple REST API",
                                    with_certificate=False)


# -- pairing tenant SAEs with the portal's backend SAEs ------------------------------------------------
@dataclass(frozen=True)
class BackendPair:
    master_node: QkdNode
    master_sae: str
    slave_sae: str


def tenant_sae(tenant: Tenant, name: str, role: str) -> Sae:
    """The tenant's SAE called ``name``; another tenant's SAE is indistinguishable from none."""
    sae = tenant_sae_named(tenant, name)
    if sae is None:
        raise BadRequest(f"unknown {role} SAE {name!r}")
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


def multicast_backend_saes(pair: BackendPair, slaves: list[Sae]) -> list[str]:
    """The backend SAE each tenant slave receives the key as: distinct ones, since the KME delivers a key once
    per backend SAE (two tenant SAEs of one node get two of the portal's SAEs at that node).

    The first slave keeps its usual backend SAE (``backend_pair``); others on a node take the node's next
    unused portal SAE, never the master's own."""
    used = {(pair.master_node.pk, pair.master_sae), (slaves[0].node_id, pair.slave_sae)}
    out = [pair.slave_sae]
    for extra in slaves[1:]:
        free = [b for b in extra.node.backend_sae_ids if (extra.node_id, b) not in used]
        if not free:
            raise BadRequest(f"the portal has no further SAE identity at node {extra.node.node_id} for another "
                             "slave of the same key; name SAEs at other nodes", details=[{"slave_SAE_ID": extra.name}])
        used.add((extra.node_id, free[0]))
        out.append(free[0])
    return out
