"""Billing: price books, billing accounts, invoices and credit notes, webhooks, and the operator's asset costs.

Money is ``Decimal`` everywhere (``DecimalField``); amounts on invoices and credit notes are in cents
(2 decimal places) and were rounded by ``billing.rating`` (per line, ROUND_HALF_UP). Finalized invoices and
issued credit notes are immutable: their ``save``/``delete`` refuse, and so do their lines'.
"""

from __future__ import annotations

import secrets
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.timezone import now as _now

from tenants.models import METER_CHOICES, Plan, Tenant
from tenants.scoping import TenantScopedManager

MONEY = {"max_digits": 18, "decimal_places": 2}
PRICE = {"max_digits": 20, "decimal_places": 8}  # unit prices may be tiny (EUR per Mbit)


class PriceBook(models.Model):
    """The prices of one plan from ``effective_from`` on, until the plan's next book takes over.

    Never retroactive: a book cannot be created with, or moved to, an ``effective_from`` in the past, and once
    it is in effect neither it nor its components or tiers can change (``is_locked``)."""

    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=100, blank=True)
    currency = models.CharField(max_length=3, default="EUR")
    effective_from = models.DateTimeField(help_text="UTC instant from which these prices apply (not in the past)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan_id", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["plan", "effective_from"], name="uniq_pricebook_start")]

    def __str__(self) -> str:
        return f"{self.plan} from {self.effective_from:%Y-%m-%d %H:%M} ({self.currency})"

    def save(self, *args, backdate: bool = False, **kwargs) -> None:
        """``backdate=True`` (demo bootstrap and tests only) allows a start in the past for a new book."""
        now = timezone.now()
        if self.pk is None:
            if self.effective_from < now and not backdate:
                raise ValidationError("a price book cannot take effect in the past (never retroactive)")
        else:
            stored = PriceBook.objects.get(pk=self.pk)
            if stored.is_locked:
                raise ValidationError("this price book is already in effect; add a new one instead")
            if self.effective_from < now:
                raise ValidationError("a price book cannot take effect in the past (never retroactive)")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self.is_locked:
            raise ValidationError("this price book is already in effect and cannot be deleted")
        return super().delete(*args, **kwargs)

    @property
    def is_locked(self) -> bool:
        """In effect (or was): its prices may already have rated usage."""
        return self.effective_from <= timezone.now()

    def clean(self) -> None:
        if len(self.currency) != 3 or not self.currency.isalpha() or not self.currency.isupper():
            raise ValidationError({"currency": "an ISO 4217 code such as EUR"})


class PriceComponent(models.Model):
    """The price of one meter in a book: ``unit_price`` per ``scale`` base units (bits, bytes, seconds,
    orders) — e.g. per 1 Mbit = 1,000,000 bits, per GB = 10^9 bytes, per hour = 3600 s.

    ``included``: the allowance, in billing units (e.g. 100 = 100 Mbit), free each period. Graduated tiers
    (optional) price the period's cumulative quantity band by band; above the last tier ``unit_price``."""

    book = models.ForeignKey(PriceBook, on_delete=models.CASCADE, related_name="components")
    meter = models.CharField(max_length=40, choices=METER_CHOICES)
    unit_price = models.DecimalField(**PRICE)
    scale = models.PositiveBigIntegerField(default=1, help_text="base units per billing unit (1e6: per Mbit)")
    unit_label = models.CharField(max_length=20, help_text="the billing unit, e.g. Mbit, GB, hour")
    included = models.PositiveBigIntegerField(default=0, help_text="allowance per period, in billing units")

    class Meta:
        ordering = ["book_id", "meter"]
        constraints = [models.UniqueConstraint(fields=["book", "meter"], name="uniq_component_meter")]

    def __str__(self) -> str:
        return f"{self.meter}: {self.unit_price} {self.book.currency}/{self.unit_label}"

    def save(self, *args, backdate: bool = False, **kwargs) -> None:
        if PriceBook.objects.get(pk=self.book_id).is_locked and not backdate:
            raise ValidationError("this price book is already in effect; add a new one instead")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self.book.is_locked:
            raise ValidationError("this price book is already in effect; add a new one instead")
        return super().delete(*args, **kwargs)

    def clean(self) -> None:
        if self.unit_price is not None and self.unit_price < 0:
            raise ValidationError({"unit_price": "must not be negative"})


class PriceTier(models.Model):
    """A graduated band: billing units up to ``up_to`` of the period's cumulative quantity (allowance
    included) cost ``unit_price`` each; ``up_to`` null = no upper bound."""

    component = models.ForeignKey(PriceComponent, on_delete=models.CASCADE, related_name="tiers")
    up_to = models.PositiveBigIntegerField(null=True, blank=True)
    unit_price = models.DecimalField(**PRICE)

    class Meta:
        ordering = ["component_id", models.F("up_to").asc(nulls_last=True)]

    def __str__(self) -> str:
        return f"up to {self.up_to or '∞'}: {self.unit_price}"

    def save(self, *args, backdate: bool = False, **kwargs) -> None:
        if self.component.book.is_locked and not backdate:
            raise ValidationError("this price book is already in effect; add a new one instead")
        super().save(*args, **kwargs)


class BillingAccount(models.Model):
    """A tenant's billing settings: monthly periods starting on ``anchor_day`` at local midnight in
    ``timezone``; usage before ``starts_at`` is not billed."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="+")
    timezone = models.CharField(max_length=64, default="UTC")
    anchor_day = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(28)])
    starts_at = models.DateTimeField(default=_now)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return f"{self.tenant_id}: monthly from day {self.anchor_day} ({self.timezone})"

    def save(self, *args, **kwargs) -> None:
        """The period grid (anchor day, time zone, start) is fixed once an invoice exists: moving it would make
        periods overlap the invoiced ones."""
        if self.pk is not None:
            stored = BillingAccount.objects.unscoped().get(pk=self.pk)
            moved = (stored.anchor_day, stored.timezone, stored.starts_at) != (self.anchor_day, self.timezone,
                                                                                self.starts_at)
            if moved and Invoice.objects.for_tenant(self.tenant_id).exists():
                raise ValidationError("the billing period settings cannot change once the tenant has invoices")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError({"timezone": "an IANA time zone such as Europe/Madrid"}) from None


class NumberSequence(models.Model):
    """A gap-free counter (one per operator and document kind), taken under a row lock in the transaction
    that finalizes the document: a rollback gives the number back."""

    name = models.CharField(max_length=50, unique=True)
    next_value = models.PositiveBigIntegerField(default=1)

    def __str__(self) -> str:
        return f"{self.name}: next {self.next_value}"


class _Frozen(models.Model):
    """A document that is immutable once out of draft: ``save`` and ``delete`` check the stored row."""

    FINAL_STATUS = "finalized"

    class Meta:
        abstract = True

    def save(self, *args, **kwargs) -> None:
        if self._stored_is_final():
            raise ValidationError(f"{self._meta.verbose_name} {self.pk} is final and immutable; issue a credit note")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self._stored_is_final():
            raise ValidationError(f"{self._meta.verbose_name} {self.pk} is final and cannot be deleted")
        return super().delete(*args, **kwargs)

    def _stored_is_final(self) -> bool:
        if self.pk is None:
            return False
        stored = type(self).objects.unscoped().filter(pk=self.pk).values_list("status", flat=True).first()
        return stored == self.FINAL_STATUS


class Invoice(_Frozen):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINALIZED = "finalized", "Finalized"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    number = models.CharField(max_length=40, unique=True, null=True, blank=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3, default="EUR")
    total = models.DecimalField(default=Decimal("0.00"), **MONEY)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(default=timezone.now)
    finalized_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-period_start", "tenant_id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "period_start"], name="uniq_invoice_period")]

    def __str__(self) -> str:
        return self.number or f"draft {self.tenant_id} {self.period_start:%Y-%m-%d}"

    @property
    def credited(self) -> Decimal:
        notes = CreditNote.objects.for_tenant(self.tenant_id).filter(invoice=self)
        return notes.aggregate(s=models.Sum("total"))["s"] or Decimal("0.00")


class _FrozenLine(models.Model):
    parent_field = "invoice"

    class Meta:
        abstract = True

    def save(self, *args, **kwargs) -> None:
        if self._parent_final():
            raise ValidationError("the lines of a final document are immutable")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self._parent_final():
            raise ValidationError("the lines of a final document are immutable")
        return super().delete(*args, **kwargs)

    def _parent_final(self) -> bool:
        parent = getattr(self, self.parent_field)
        return type(parent).objects.unscoped().filter(pk=parent.pk, status=parent.FINAL_STATUS).exists()


class InvoiceLine(_FrozenLine):
    """One rated band: a meter's quantity in one price segment and one band (allowance, tier, base price).

    ``late_period_start`` set: usage of that earlier, already finalized period recorded after its close."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    meter = models.CharField(max_length=40, choices=METER_CHOICES)
    description = models.CharField(max_length=300)
    band = models.CharField(max_length=40, help_text="allowance, tier N or base")
    quantity = models.BigIntegerField(help_text="base units (bits, bytes, seconds, orders)")
    unit_label = models.CharField(max_length=20)
    scale = models.PositiveBigIntegerField()
    unit_price = models.DecimalField(**PRICE)
    amount = models.DecimalField(**MONEY)
    segment_start = models.DateTimeField(help_text="the price segment this usage was in")
    segment_end = models.DateTimeField()
    price_book = models.ForeignKey(PriceBook, on_delete=models.PROTECT, related_name="+")
    late_period_start = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["invoice_id", "position"]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


class CreditNote(_Frozen):
    """A correction of a finalized invoice: never an edit of the invoice itself. Issued = final."""

    FINAL_STATUS = "issued"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, default="issued")
    number = models.CharField(max_length=40, unique=True)
    reason = models.TextField()
    currency = models.CharField(max_length=3)
    total = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.number


class CreditNoteLine(_FrozenLine):
    parent_field = "credit_note"

    credit_note = models.ForeignKey(CreditNote, on_delete=models.CASCADE, related_name="lines")
    description = models.CharField(max_length=300)
    amount = models.DecimalField(**MONEY)
    invoice_line = models.ForeignKey(InvoiceLine, on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["credit_note_id", "id"]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookEndpoint(models.Model):
    """Where events go: a tenant's endpoint gets that tenant's events; an operator's (no tenant) gets all."""

    EVENTS = ("invoice.finalized", "credit_note.issued", "quota.threshold")

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", null=True, blank=True)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, default=_new_secret)
    events = models.JSONField(default=list, help_text="event names; empty = all")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.url} ({self.tenant_id or 'operator'})"

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", null=True, blank=True)
    event = models.CharField(max_length=50)
    event_id = models.CharField(max_length=200, help_text="stable id of the event (the same event is sent once)")
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_id"], name="uniq_delivery_event")]

    def __str__(self) -> str:
        return f"{self.event} -> {self.endpoint_id}: {self.status}"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["delivery_id", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.status_code or self.error[:40]}"


class QuotaAlert(models.Model):
    """A quota threshold crossed in one window: the unique row makes each alert fire once per window."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    quota_key = models.CharField(max_length=40)
    window_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField(help_text="percent")
    used = models.BigIntegerField()
    limit = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "quota_key", "window_start", "threshold"],
                                               name="uniq_quota_alert")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.quota_key} {self.threshold}% @{self.window_start:%Y-%m-%d}"


class AssetCost(models.Model):
    """What a QKD link or QRNG cost the operator: straight-line depreciation plus operating cost."""

    class Kind(models.TextChoices):
        QKD_LINK = "qkd_link", "QKD link"
        QRNG = "qrng", "QRNG"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    asset_id = models.CharField(max_length=100, unique=True,
                                help_text="the link id in the network view (e.g. CAIT-CCS) or the QRNG source name")
    endpoints = models.CharField(max_length=200, blank=True, help_text="a link's two node ids, comma-separated")
    vendor = models.CharField(max_length=100, blank=True)
    currency = models.CharField(max_length=3, default="EUR")
    purchase_price = models.DecimalField(**MONEY)
    depreciation_years = models.PositiveSmallIntegerField(default=5)
    operating_cost_per_year = models.DecimalField(default=Decimal("0.00"), **MONEY)
    in_service_from = models.DateField(default=timezone.now)

    class Meta:
        ordering = ["kind", "asset_id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.asset_id}"

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.endpoints.split(",") if p.strip())
