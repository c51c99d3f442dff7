"""The SD-QKD backend registry (nodes and their KMEs), tenants' SAEs, the record of delivered key IDs and the
service order every on-demand service (key stream, tunnel, TLS session) is.

Key material is never stored here: only key IDs, sizes and who they were delivered to.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models
from django.utils import timezone

from tenants.meters import KEY_STREAM_SECONDS, KEY_STREAMS
from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class ServiceOrder(models.Model):
    """Something a tenant orders that lives over time (a key stream, an IPsec tunnel, a TLS session).

    One lifecycle for all of them (``services.orders``): placing one takes a slot of its concurrent meter and
    inserts the row in one transaction; states move by conditional updates (``orders.advance``), so two workers
    never both win a transition; finishing gives the slot back exactly once; the time spent in an active
    state is metered in the usage ledger (``duration_meter``, split at hour boundaries).

    A subclass declares its meters and which of its states are live (hold the slot) and active (metered)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False, help_text="the order's public id")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=20)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True, help_text="when it first entered an active state")
    closed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="why it failed or was closed")
    metered_until = models.DateTimeField(null=True, blank=True, help_text="active time metered up to here")

    objects = TenantScopedManager()

    order_kind: ClassVar[str]
    concurrent_meter: ClassVar[str]
    duration_meter: ClassVar[str | None] = None
    initial_state: ClassVar[str]
    live_states: ClassVar[tuple[str, ...]]
    active_states: ClassVar[tuple[str, ...]] = ()

    class Meta:
        abstract = True

    @property
    def is_live(self) -> bool:
        return self.state in self.live_states


class QkdNode(models.Model):
    """A node of the QKD network and how the portal reaches its KME (ETSI GS QKD 014)."""

    class AuthMode(models.TextChoices):
        # The portal presents its own client certificate and names the backend SAE it acts for in
        # X-SAE-ID (the embedded twin; KMEs with a trusted-proxy feature).
        PROXY_HEADER = "proxy-header", "Portal certificate + X-SAE-ID"
        # The portal holds the backend SAE's own client certificate (any standard KME).
        SAE_CERTIFICATE = "sae-certificate", "Backend SAE certificate"

    node_id = models.CharField(max_length=100, unique=True, help_text="the node's id in the network (e.g. CAIT)")
    site = models.CharField(max_length=200, blank=True)
    kme_url = models.URLField(help_text="base URL of the node's KME, e.g. https://kme-cait.example.org:8443")
    backend_sae_ids = models.JSONField(
        default=list, help_text="the portal's SAE identities at this KME (the first is used as master; a second "
        "one lets two tenant SAEs of the same node exchange keys)")
    auth_mode = models.CharField(max_length=20, choices=AuthMode.choices, default=AuthMode.SAE_CERTIFICATE)
    client_cert_path = models.CharField(max_length=500, blank=True, help_text="PEM file on the portal host")
    client_key_path = models.CharField(max_length=500, blank=True, help_text="PEM file on the portal host")
    ca_path = models.CharField(max_length=500, blank=True, help_text="CA bundle that signed the KME certificate")
    enabled = models.BooleanField(default=True)
    source = models.CharField(max_length=20, default="operator", help_text="'twin' when registered automatically")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["node_id"]

    def __str__(self) -> str:
        return self.node_id


class Sae(models.Model):
    """A tenant's Secure Application Entity attached to a node; authenticates with a portal-issued
    client certificate (mTLS) or an API token naming it."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=100, help_text="the SAE ID the tenant's applications use")
    node = models.ForeignKey(QkdNode, on_delete=models.PROTECT, related_name="saes")
    description = models.CharField(max_length=200, blank=True)
    cert_serial = models.CharField(max_length=64, blank=True, db_index=True)
    cert_fingerprint = models.CharField(max_length=64, blank=True)
    cert_not_after = models.DateTimeField(null=True, blank=True)
    cert_issued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="uniq_sae_name_per_tenant")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant_id}@{self.node_id})"


class KeyDelivery(models.Model):
    """The keys one request delivered to a master SAE for one slave SAE (multicast: one row per slave).

    Only key IDs: the KME's own IDs, 16 bytes each in ``backend_key_ids``. The tenant sees portal key IDs
    that seal ``(batch, index)`` (``services.keyids``), so one row stands for every key of the request."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", db_index=False)
    batch = models.BigIntegerField(help_text="the number sealed into the request's portal key IDs")
    master = models.ForeignKey(Sae, on_delete=models.PROTECT, related_name="+")
    slave = models.ForeignKey(Sae, on_delete=models.PROTECT, related_name="+")
    size_bits = models.PositiveIntegerField()
    key_count = models.PositiveIntegerField()
    backend_key_ids = models.BinaryField(help_text="the KME's key IDs, 16 bytes each, in the order handed out")
    hops = models.PositiveSmallIntegerField(default=0)
    backend_slave_sae = models.CharField(
        max_length=100, blank=True, default="",
        help_text="the portal's SAE at the slave's KME the keys were delivered to (empty: the usual pairing)")
    created_at = models.DateTimeField(auto_now_add=True)
    fetched_keys = models.PositiveIntegerField(default=0, help_text="keys the slave has fetched so far")

    objects = TenantScopedManager()

    class Meta:
        # (batch, slave) finds the row of a key ID for dec_keys; (tenant, created_at) serves the listings.
        constraints = [models.UniqueConstraint(fields=["batch", "slave"], name="uniq_batch_per_slave")]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="keydelivery_tenant_recent")]

    def __str__(self) -> str:
        return f"{self.key_count} x {self.size_bits} bit {self.master_id}->{self.slave_id}"

    @property
    def first_key_id(self) -> str:
        """The tenant's key ID of the first key (the others follow from the batch)."""
        return self.key_ids(1)[0]

    def key_ids(self, count: int | None = None) -> list[str]:
        """The tenant's key IDs of this delivery's keys (of the first ``count``)."""
        from .keyids import seal

        return seal(self.batch, self.key_count if count is None else count)


class KeyStream(ServiceOrder):
    """An ETSI GS QKD 004 key stream between two of a tenant's SAEs, mapped onto a backend 004 stream.

    Only metadata lives here: the backend KME holds the stream's key material (its buffer of chunks) and the
    portal hands a chunk from the backend to the calling SAE without keeping it. A service order: it holds a
    ``key_streams`` slot while opened or connected, and its connected time is metered in
    ``key_stream_seconds`` (``activated_at`` is when the peer joined).
    """

    class State(models.TextChoices):
        OPENED = "opened", "Opened, waiting for the peer SAE"
        CONNECTED = "connected", "Both SAEs connected"
        CLOSED = "closed", "Closed"
        EXPIRED = "expired", "Expired (TTL)"

    order_kind = "key_stream"
    concurrent_meter = KEY_STREAMS
    duration_meter = KEY_STREAM_SECONDS
    initial_state = State.OPENED
    live_states = (State.OPENED, State.CONNECTED)
    active_states = (State.CONNECTED,)

    ksid = models.UUIDField(help_text="the Key_stream_ID the tenant's SAEs use")
    backend_ksid = models.UUIDField(unique=True, help_text="the Key_stream_ID at the backend KMEs")
    source = models.ForeignKey(Sae, on_delete=models.PROTECT, related_name="+", help_text="the initiating SAE")
    destination = models.ForeignKey(Sae, on_delete=models.PROTECT, related_name="+")
    backend_source_sae = models.CharField(max_length=100, help_text="the portal's SAE at the source's KME")
    backend_destination_sae = models.CharField(max_length=100)
    qos = models.JSONField(help_text="the negotiated QoS (ETSI 004 field names)")
    state = models.CharField(max_length=20, choices=State.choices, default=State.OPENED)
    next_index_source = models.PositiveIntegerField(default=0, help_text="next chunk index for the source SAE")
    next_index_destination = models.PositiveIntegerField(default=0)
    highest_index = models.IntegerField(default=-1, help_text="highest chunk index handed to either SAE")
    prefetched_to = models.IntegerField(default=-1, help_text="highest chunk index made ahead at the backend")
    route = models.JSONField(default=dict, blank=True, help_text="hops and path of the last chunk")
    chunks_metered = models.PositiveIntegerField(
        default=0, help_text="chunk indexes charged so far (each once, in the same transaction as its ledger row)")

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "ksid"], name="uniq_key_stream_per_tenant")]
        indexes = [models.Index(fields=["state", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.ksid} {self.source_id}->{self.destination_id} ({self.state})"


class LinkSample(models.Model):
    """A QKD link's telemetry at one moment (network-wide, not a tenant's): the link pages' history charts.

    Taken by ``services.linkhistory.sample`` (beat, every few seconds, and when the network is viewed); samples
    older than ``LINK_HISTORY_HOURS`` are pruned."""

    link_id = models.CharField(max_length=100)
    at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=20)
    secret_key_rate_bps = models.FloatField(null=True)
    qber = models.FloatField(null=True)
    key_store_fill_bits = models.BigIntegerField(null=True)
    key_store_capacity_bits = models.BigIntegerField(null=True)
    aborted_blocks = models.BigIntegerField(null=True, help_text="cumulative aborted post-processing blocks")

    class Meta:
        indexes = [models.Index(fields=["link_id", "at"])]

    def __str__(self) -> str:
        return f"{self.link_id} {self.state} at {self.at:%Y-%m-%d %H:%M:%S}"
