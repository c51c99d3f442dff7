"""Tenants' SAEs: registration on a node, client certificates from the portal CA (bundle shown once)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from portal.errors import Conflict
from tenants.models import Tenant

from . import pki, registry
from .models import KeyDelivery, KeyStream, Sae


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
    sae.cert_serial, sae.cert_fingerprint = issued.serial_hex, issued.fingerprint_sha256
    sae.cert_not_after = issued.not_after
    return SaeBundle(sae, issued.cert_pem, issued.key_pem, pki.ca_pem())


def register_sae(tenant: Tenant, name: str, node_id: str, description: str = "",
                 with_certificate: bool = True) -> SaeBundle | Sae:
    node = registry.node(node_id)
    try:
        with transaction.atomic():
            sae = Sae.objects.create(tenant=tenant, name=name, node=node, description=description)
    except IntegrityError:
        raise Conflict(f"an SAE called {name!r} already exists in this tenant") from None
    return _issue(sae) if with_certificate else sae


def reissue_certificate(sae: Sae) -> SaeBundle:
    """A new certificate; the old one stops authenticating at once (authentication matches the serial)."""
    return _issue(sae)


def revoke_certificate(sae: Sae) -> None:
    Sae.objects.for_tenant(sae.tenant).filter(pk=sae.pk).update(cert_serial="", cert_fingerprint="")
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


def sae_for_certificate_serial(serial_hex: str) -> Sae | None:
    """The SAE whose current certificate has this serial (authentication decides the tenant from it)."""
    if not serial_hex:
        return None
    return Sae.objects.unscoped().select_related("tenant", "tenant__plan", "node").filter(
        cert_serial=serial_hex).first()


def default_sae(tenant: Tenant, node_id: str) -> Sae:
    """The tenant's SAE at ``node_id`` for the simple REST API: its first one, or one created for it."""
    node = registry.node(node_id)
    sae = Sae.objects.for_tenant(tenant).filter(node=node).order_by("created_at").first()
    if sae is not None:
        return sae
    name = f"node-{node.node_id.lower()}"
    existing = Sae.objects.for_tenant(tenant).filter(name=name).first()
    return existing or register_sae(tenant, name, node.node_id, "created for the simple REST API",
                                    with_certificate=False)
