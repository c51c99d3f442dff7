"""Tenants, memberships, plans and quotas, API tokens and the usage ledger."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .meters import METERS, QUOTA_KEYS, UNLIMITED
from .scoping import TenantScopedManager

QUOTA_KEY_CHOICES = [(k, k) for k in QUOTA_KEYS]
METER_CHOICES = [(m.name, m.label) for m in METERS.values()]


class Plan(models.Model):
    """A commercial plan: a named set of quota limits (``-1`` = unlimited)."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def limits(self) -> dict[str, int]:
        """Every quota key with its limit; keys the plan does not list are 0 (not included)."""
        listed = {q.quota_key: q.limit for q in self.quotas.all()}
        return {k: listed.get(k, 0) for k in QUOTA_KEYS}


class PlanQuota(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="quotas")
    quota_key = models.CharField(max_length=40, choices=QUOTA_KEY_CHOICES)
    limit = models.BigIntegerField(help_text="-1 means unlimited")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plan", "quota_key"], name="uniq_plan_quota")]

    def __str__(self) -> str:
        return f"{self.plan}: {self.quota_key}={self.limit}"

    def clean(self) -> None:
        if self.limit < UNLIMITED:
            raise ValidationError({"limit": "must be -1 (unlimited) or a non-negative number"})


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


# Roles that may manage members and tokens of others, and roles that may change anything at all.
MANAGING_ROLES = {Role.OWNER, Role.ADMIN}
WRITING_ROLES = {Role.OWNER, Role.ADMIN, Role.MEMBER}


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="uniq_membership")]
        ordering = ["tenant_id", "user_id"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


def _invitation_expiry():
    return timezone.now() + timedelta(days=14)


class Invitation(models.Model):
    """An offer to join a tenant: the membership exists only once the invited user accepts it.

    ``invitee`` is what the inviter typed (a username or an email); ``user`` is the active account it matched
    when the invitation was made, or None, which nobody can accept: the API answers the same either way, so
    inviting does not tell who has an account, nor anyone's email.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    invitee = models.CharField(max_length=254)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="invitations")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=_invitation_expiry)
    responded_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation of {self.invitee} to {self.tenant_id} ({self.role}, {self.status})"


class TenantQuotaOverride(models.Model):
    """A per-tenant limit that replaces the plan's for one quota key."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    quota_key = models.CharField(max_length=40, choices=QUOTA_KEY_CHOICES)
    limit = models.BigIntegerField(help_text="-1 means unlimited")

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "quota_key"], name="uniq_tenant_override")]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.quota_key}={self.limit}"


class QuotaCounter(models.Model):
    """How much of one quota key a tenant has used in one window; updated only by the quota service."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    quota_key = models.CharField(max_length=40, choices=QUOTA_KEY_CHOICES)
    window_start = models.DateTimeField()
    used = models.BigIntegerField(default=0)

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "quota_key", "window_start"], name="uniq_quota_window"),
            models.CheckConstraint(condition=models.Q(used__gte=0), name="quota_used_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.quota_key}@{self.window_start:%Y-%m-%d} used {self.used}"


class UsageRecord(models.Model):
    """The append-only usage ledger: one row per consumption or release, never updated or deleted.

    It is the single source of truth for metering and billing. A release (what a failed delivery did
    not use, a closed tunnel) is a new row with a negative quantity.
    """

    class Kind(models.TextChoices):
        CONSUME = "consume", "Consume"
        RELEASE = "release", "Release"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    meter = models.CharField(max_length=40, choices=METER_CHOICES)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CONSUME)
    quantity = models.BigIntegerField()
    unit = models.CharField(max_length=20)
    reference = models.CharField(max_length=200, blank=True, help_text="the service object this usage is for")
    idempotency_key = models.CharField(max_length=200)
    order_id = models.UUIDField(null=True, blank=True,
                                help_text="the service order (tunnel, session, key stream) this usage belongs to")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], name="uniq_usage_idempotency"),
        ]
        indexes = [models.Index(fields=["tenant", "meter", "created_at"]),
                   models.Index(fields=["order_id"], name="usage_order", condition=models.Q(order_id__isnull=False))]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.tenant} {self.kind} {self.quantity} {self.unit} {self.meter}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise ValidationError("the usage ledger is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("the usage ledger is append-only")


class QuotaReservation(models.Model):
    """Quota held for a request while its backend works (a KME handing out keys, a QRNG drawing): counted in the
    quota counters from ``tenants.quota.reserve`` until ``settle`` turns it into a ledger row or ``release``
    gives it back. At rest, counters == ledger + open reservations; a reservation whose request died with its
    process is given back by the periodic ``expire_reservations``."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    meter = models.CharField(max_length=40, choices=METER_CHOICES)
    amount = models.BigIntegerField()
    window_starts = models.JSONField(help_text="the start of each quota window the amount was counted in")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return f"{self.tenant_id} holds {self.amount} {self.meter}"


class UsageRollup(models.Model):
    """Hourly sums of the ledger per tenant and meter, rebuilt by a periodic task (for charts and bills)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    meter = models.CharField(max_length=40, choices=METER_CHOICES)
    hour = models.DateTimeField()
    quantity = models.BigIntegerField()
    records = models.IntegerField()

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "meter", "hour"], name="uniq_rollup_hour")]
        ordering = ["-hour"]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.meter} {self.hour:%Y-%m-%d %H}h: {self.quantity}"


class Scope(models.TextChoices):
    KEYS_READ = "keys:read", "Read QKD keys and key streams"
    KEYS_WRITE = "keys:write", "Request QKD keys, open key streams, manage SAEs"
    ENTROPY_READ = "entropy:read", "Draw QRNG entropy"
    TUNNELS_READ = "tunnels:read", "List IPsec tunnels"
    TUNNELS_WRITE = "tunnels:write", "Create and close IPsec tunnels"
    TLS_READ = "tls:read", "List TLS sessions"
    TLS_WRITE = "tls:write", "Create and close TLS sessions"
    BILLING_READ = "billing:read", "Read quotas, usage and bills"
    TENANT_ADMIN = "tenant:admin", "Manage members and tokens of the tenant"
    OPERATOR = "operator", "Operator actions (staff only): tenants, plans, network"


class ApiToken(models.Model):
    """A bearer token ``qx_<key>.<secret>``: the key is a public lookup id, the secret is stored only as
    HMAC-SHA256 under a rotatable pepper (``pepper_id`` says which)."""

    key = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    pepper_id = models.PositiveSmallIntegerField()
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"qx_{self.key} ({self.name})"

    @property
    def prefix(self) -> str:
        return f"qx_{self.key}"

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and not self.is_expired()


class AuditEvent(models.Model):
    """Who did what, when: one row per action that changes a tenant, a plan, a token, an order or the network.

    Written by the service functions themselves (``tenants.audit.record``), so an action taken through the API,
    the web pages, the admin or a worker is recorded the same way. Append-only; ``details`` never holds a
    secret (``record`` drops keys that look like one)."""

    class ActorType(models.TextChoices):
        USER = "user", "User (signed-in session)"
        TOKEN = "token", "API token"
        SYSTEM = "system", "System (worker, periodic job, command)"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    actor = models.CharField(max_length=200, help_text="username, token prefix (qx_...) or the system job's name")
    # Null for events outside any tenant (a plan's limits, a twin link, an operator's sign-in).
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=60, db_index=True)
    object_type = models.CharField(max_length=60, blank=True)
    object_id = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="audit_tenant_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise ValidationError("the audit log is append-only")
        super().save(*args, **kwargs)
