"""Billing in the admin: operators edit price books (future ones only) and asset costs; invoices, credit notes
and webhook deliveries are shown read-only (corrections are credit notes, issued through the API)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.utils import timezone

from .models import (
    AssetCost,
    BillingAccount,
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    PriceBook,
    PriceComponent,
    PriceTier,
    WebhookDelivery,
    WebhookEndpoint,
)


class PriceBookForm(forms.ModelForm):
    class Meta:
        model = PriceBook
        fields = ["plan", "name", "currency", "effective_from"]

    def clean(self):
        data = super().clean()
        if self.instance.pk and self.instance.is_locked:
            raise ValidationError("this price book is already in effect; add a new one instead")
        if data.get("effective_from") and data["effective_from"] < timezone.now():
            raise ValidationError({"effective_from": "a price book cannot take effect in the past"})
        return data


class LockedInlineMixin:
    def _locked(self, obj) -> bool:
        return obj is not None and obj.is_locked

    def has_add_permission(self, request, obj=None):
        return not self._locked(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return not self._locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not self._locked(obj) and super().has_delete_permission(request, obj)


class PriceComponentInline(LockedInlineMixin, admin.TabularInline):
    model = PriceComponent
    extra = 0
    show_change_link = True


@admin.register(PriceBook)
class PriceBookAdmin(admin.ModelAdmin):
    form = PriceBookForm
    list_display = ["plan", "name", "currency", "effective_from", "is_locked"]
    list_filter = ["plan"]
    inlines = [PriceComponentInline]

    def has_change_permission(self, request, obj=None):
        return (obj is None or not obj.is_locked) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return (obj is None or not obj.is_locked) and super().has_delete_permission(request, obj)


class PriceTierInline(admin.TabularInline):
    model = PriceTier
    extra = 0

    def _locked(self, obj) -> bool:
        return obj is not None and obj.book.is_locked

    has_add_permission = LockedInlineMixin.has_add_permission
    has_change_permission = LockedInlineMixin.has_change_permission
    has_delete_permission = LockedInlineMixin.has_delete_permission


@admin.register(PriceComponent)
class PriceComponentAdmin(admin.ModelAdmin):
    list_display = ["book", "meter", "unit_price", "unit_label", "scale", "included"]
    inlines = [PriceTierInline]

    def has_change_permission(self, request, obj=None):
        return (obj is None or not obj.book.is_locked) and super().has_change_permission(request, obj)


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["tenant", "timezone", "anchor_day", "starts_at"]

    def get_queryset(self, request):
        return BillingAccount.objects.unscoped()


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    fields = ["position", "description", "quantity", "unit_label", "unit_price", "amount", "late_period_start"]
    has_add_permission = ReadOnlyAdmin.has_add_permission
    has_change_permission = ReadOnlyAdmin.has_change_permission
    has_delete_permission = ReadOnlyAdmin.has_delete_permission


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "tenant", "status", "period_start", "period_end", "total", "currency"]
    list_filter = ["status"]
    inlines = [InvoiceLineInline]

    def get_queryset(self, request):
        return Invoice.objects.unscoped().select_related("tenant")


class CreditNoteLineInline(admin.TabularInline):
    model = CreditNoteLine
    extra = 0
    has_add_permission = ReadOnlyAdmin.has_add_permission
    has_change_permission = ReadOnlyAdmin.has_change_permission
    has_delete_permission = ReadOnlyAdmin.has_delete_permission


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "tenant", "total", "currency", "created_at"]
    inlines = [CreditNoteLineInline]

    def get_queryset(self, request):
        return CreditNote.objects.unscoped().select_related("tenant", "invoice")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "tenant", "active", "events"]
    exclude = ["secret"]

    def get_queryset(self, request):
        return WebhookEndpoint.objects.unscoped()


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["event", "endpoint", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_filter = ["status", "event"]

    def get_queryset(self, request):
        return WebhookDelivery.objects.unscoped()


@admin.register(AssetCost)
class AssetCostAdmin(admin.ModelAdmin):
    list_display = ["asset_id", "kind", "vendor", "purchase_price", "currency", "depreciation_years",
                    "operating_cost_per_year", "in_service_from"]
