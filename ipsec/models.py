"""IPsec gateways (one strongSwan charon per network node) and the tenants' tunnels between them.

Key material never lives here: a tunnel row carries the key ID of the QKD key in use and its re-key history
carries key IDs only. The keys themselves go from the KMEs straight into the two charons over VICI.
"""

from __future__ import annotations

from django.db import models

from services.models import ServiceOrder
from tenants.meters import IPSEC_TUNNEL_SECONDS, IPSEC_TUNNELS
from tenants.scoping import TenantScopedManager


class IpsecGateway(models.Model):
    """The IPsec gateway of a network node: a charon the portal drives over VICI."""

    node_id = models.CharField(max_length=100, unique=True, help_text="the QKD node it sits at (e.g. CAIT)")
    vici_uri = models.CharField(max_length=300, help_text="unix:///path/charon.vici (local) or tcp://host:port")
    address = models.GenericIPAddressField(help_text="the gateway's outer address (IKE identity, ESP endpoint)")
    pools = models.JSONField(default=list, help_text="inner address pools (CIDR) tenants' subnets must lie in")
    netns = models.CharField(max_length=64, blank=True,
                             help_text="lab only: the network namespace where tenant hosts are added")
    source = models.CharField(max_length=20, default="operator", help_text="'lab' when make run registered it")
    enabled = models.BooleanField(default=True)
    reachable = models.BooleanField(default=False, help_text="the last VICI call succeeded")
    last_error = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node_id"]

    def __str__(self) -> str:
        return f"{self.node_id} ({self.address})"


class Tunnel(ServiceOrder):
    """A site-to-site IPsec tunnel between the gateways of two nodes, keyed with fresh QKD keys (RFC 8784 PPK)."""

    class State(models.TextChoices):
        REQUESTED = "requested", "Requested"
        PROVISIONING = "provisioning", "Provisioning"
        UP = "up", "Up"
        REKEYING = "rekeying", "Re-keying"
        DEGRADED = "degraded", "Degraded (re-establishing)"
        CLOSING = "closing", "Closing"
        CLOSED = "closed", "Closed"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    class KeyPath(models.TextChoices):
        END_TO_END = "end-to-end", "One end-to-end key (relayed by trusted nodes)"
        PER_HOP = "per-hop", "One key per QKD link along the path, combined"

    order_kind = "ipsec_tunnel"
    concurrent_meter = IPSEC_TUNNELS
    duration_meter = IPSEC_TUNNEL_SECONDS
    initial_state = State.REQUESTED
    live_states = (State.REQUESTED, State.PROVISIONING, State.UP, State.REKEYING, State.DEGRADED, State.CLOSING)
    active_states = (State.UP, State.REKEYING, State.DEGRADED)

    state = models.CharField(max_length=20, choices=State.choices, default=State.REQUESTED)
    name = models.CharField(max_length=100, blank=True, help_text="the tenant's label")
    node_a = models.CharField(max_length=100, help_text="node of side A (the initiator)")
    node_b = models.CharField(max_length=100, help_text="node of side B")
    subnet_a = models.CharField(max_length=50, help_text="the tenant's subnet behind node A (CIDR)")
    subnet_b = models.CharField(max_length=50, help_text="the tenant's subnet behind node B (CIDR)")
    esp_proposal = models.CharField(max_length=60)
    rekey_interval_s = models.PositiveIntegerField(help_text="seconds between re-keys with a fresh QKD key")
    key_path = models.CharField(max_length=20, choices=KeyPath.choices, default=KeyPath.END_TO_END)
    current_key_id = models.CharField(max_length=400, blank=True, help_text="key ID(s) of the QKD key in use")
    rekey_count = models.PositiveIntegerField(default=0)
    next_rekey_at = models.DateTimeField(null=True, blank=True)
    established_at = models.DateTimeField(null=True, blank=True, help_text="when the current IKE SA came up")
    ike_sa_id = models.CharField(max_length=20, blank=True, help_text="charon's unique id of the current IKE SA")
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)
    packets_in = models.BigIntegerField(default=0)
    packets_out = models.BigIntegerField(default=0)
    counters_at = models.DateTimeField(null=True, blank=True)
    restore_attempts = models.PositiveIntegerField(default=0, help_text="re-establishments since it degraded")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    probe = models.JSONField(default=dict, blank=True, help_text="the last connectivity probe's figures")

    objects = TenantScopedManager()

    class Meta:
        indexes = [models.Index(fields=["state", "next_rekey_at"])]

    def __str__(self) -> str:
        return f"{self.uuid} {self.node_a}:{self.subnet_a} <-> {self.node_b}:{self.subnet_b} ({self.state})"

    @property
    def conn_name(self) -> str:
        return f"qx-{self.uuid}"


class TunnelKeyEvent(models.Model):
    """One keying of a tunnel (the first, a re-key, a restore): the key ID(s) only, never key material."""

    class Kind(models.TextChoices):
        INITIAL = "initial", "Initial key"
        REKEY = "rekey", "Re-key"
        RESTORE = "restore", "Re-established"

    tunnel = models.ForeignKey(Tunnel, on_delete=models.CASCADE, related_name="key_events")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    key_id = models.CharField(max_length=400, help_text="the QKD key ID(s); per-hop: one per link, comma-separated")
    key_bits = models.PositiveIntegerField()
    ok = models.BooleanField(default=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0, help_text="key fetch + IKE until the new SA carried traffic")
    ike_sa_id = models.CharField(max_length=20, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.key_id} ({'ok' if self.ok else 'failed'})"
