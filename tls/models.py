"""TLS sessions: a tenant's quantum-keyed TLS 1.3 link from node A to a service at node B (a service order).

Only metadata lives here: key IDs (the PSK identities), ports, states. Key material is never in the database:
the managed endpoints keep it in their private PSK files (``tls.endpoints``)."""

from __future__ import annotations

from django.db import models

from services.models import QkdNode, Sae, ServiceOrder
from tenants.meters import TLS_SESSION_SECONDS, TLS_SESSIONS
from tenants.scoping import TenantScopedManager


class TlsSession(ServiceOrder):
    """A TLS 1.3 session between two nodes keyed by QKD keys as external PSKs (psk_dhe_ke: PSK + X25519)."""

    class State(models.TextChoices):
        REQUESTED = "requested", "Requested"
        PROVISIONING = "provisioning", "Provisioning"
        ACTIVE = "active", "Active"
        ROTATING = "rotating", "Rotating the key"
        DEGRADED = "degraded", "Degraded (an endpoint is being restarted)"
        CLOSING = "closing", "Closing"
        CLOSED = "closed", "Closed"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    class Mode(models.TextChoices):
        MANAGED = "managed", "Managed endpoints (stunnel at both nodes)"
        BYO = "byo", "Bring your own TLS stack"

    order_kind = "tls_session"
    concurrent_meter = TLS_SESSIONS
    duration_meter = TLS_SESSION_SECONDS
    initial_state = State.REQUESTED
    live_states = (State.REQUESTED, State.PROVISIONING, State.ACTIVE, State.ROTATING, State.DEGRADED,
                   State.CLOSING)
    active_states = (State.ACTIVE, State.ROTATING, State.DEGRADED)

    state = models.CharField(max_length=20, choices=State.choices, default=State.REQUESTED)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.MANAGED)
    node_a = models.ForeignKey(QkdNode, on_delete=models.PROTECT, related_name="+",
                               help_text="the client side: the tenant connects in plaintext here")
    node_b = models.ForeignKey(QkdNode, on_delete=models.PROTECT, related_name="+",
                               help_text="the server side, where the target service is reachable")
    target_host = models.CharField(max_length=255, blank=True)
    target_port = models.PositiveIntegerField(null=True, blank=True)
    key_size = models.PositiveIntegerField(default=256, help_text="bits of each QKD key (PSK)")
    rotate_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="a new key every N seconds")
    rotate_bytes = models.PositiveBigIntegerField(null=True, blank=True,
                                                  help_text="a new key after N bytes through the session")
    grace_seconds = models.PositiveIntegerField(default=30, help_text="how long old keys stay valid")
    sae_a = models.ForeignKey(Sae, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    sae_b = models.ForeignKey(Sae, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    sae_master = models.ForeignKey(
        Sae, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="bring-your-own: the portal's SAE of this session that takes each key for both endpoints")
    client_port = models.PositiveIntegerField(null=True, blank=True, help_text="A's plaintext port")
    server_port = models.PositiveIntegerField(null=True, blank=True, help_text="B's TLS port")
    key_id = models.CharField(max_length=64, blank=True, help_text="the current key ID = PSK identity")
    rotated_at = models.DateTimeField(null=True, blank=True)
    bytes_at_rotation = models.PositiveBigIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0, help_text="endpoint restarts by the supervisor")

    objects = TenantScopedManager()

    class Meta:
        indexes = [models.Index(fields=["state"])]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"TLS {self.uuid} {self.node_a_id}->{self.node_b_id} ({self.state})"


class TlsRotation(models.Model):
    """One key of a session (the first and each rotation): its key ID, never the key."""

    session = models.ForeignKey(TlsSession, on_delete=models.CASCADE, related_name="rotations")
    key_id = models.CharField(max_length=64)
    size_bits = models.PositiveIntegerField()
    reason = models.CharField(max_length=20, help_text="initial, time, bytes or manual")
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True, help_text="when its secret was removed")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.key_id} ({self.reason})"
