from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from billing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    PriceBook,
    PriceComponent,
    PriceTier,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from tenants.models import Plan


class InvoiceLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = ["position", "meter", "description", "band", "quantity", "unit_label", "scale", "unit_price",
                  "amount", "segment_start", "segment_end", "late_period_start"]


class InvoiceSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    # Plain strings in the schema: a second "status" enum would collide with the tenants' one in OpenAPI.
    status = serializers.CharField(read_only=True, help_text="draft or finalized")
    credited = serializers.DecimalField(max_digits=18, decimal_places=2, read_only=True)

    class Meta:
        model = Invoice
        fields = ["id", "number", "status", "tenant", "period_start", "period_end", "currency", "total", "credited",
                  "notes", "updated_at", "finalized_at"]


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta(InvoiceSerializer.Meta):
        fields = [*InvoiceSerializer.Meta.fields, "lines"]


class CreditNoteLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = CreditNoteLine
        fields = ["description", "amount"]


class CreditNoteSerializer(serializers.ModelSerializer):
    invoice = serializers.SlugRelatedField(slug_field="number", read_only=True)
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    lines = CreditNoteLineSerializer(many=True, read_only=True)

    class Meta:
        model = CreditNote
        fields = ["id", "number", "invoice", "tenant", "reason", "currency", "total", "created_at", "lines"]


class CreditNoteCreateSerializer(serializers.Serializer):
    invoice = serializers.SlugRelatedField(slug_field="number", queryset=Invoice.objects.unscoped()
                                           .filter(status=Invoice.Status.FINALIZED),
                                           help_text="the finalized invoice's number")
    reason = serializers.CharField()
    lines = CreditNoteLineSerializer(many=True)


class PriceTierSerializer(serializers.ModelSerializer):
    class Meta:
        model = PriceTier
        fields = ["up_to", "unit_price"]


class PriceComponentSerializer(serializers.ModelSerializer):
    tiers = PriceTierSerializer(many=True, required=False)

    class Meta:
        model = PriceComponent
        fields = ["meter", "unit_price", "scale", "unit_label", "included", "tiers"]

    def validate_unit_price(self, value: Decimal) -> Decimal:
        if value < 0:
            raise serializers.ValidationError("must not be negative")
        return value


class PriceBookSerializer(serializers.ModelSerializer):
    """A plan's prices from ``effective_from`` (never in the past). Once in effect it is read-only: publish a new
    book instead."""

    plan = serializers.SlugRelatedField(slug_field="slug", queryset=Plan.objects.all())
    components = PriceComponentSerializer(many=True)
    locked = serializers.BooleanField(source="is_locked", read_only=True)

    class Meta:
        model = PriceBook
        fields = ["id", "plan", "name", "currency", "effective_from", "locked", "components", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_effective_from(self, value):
        if value < timezone.now():
            raise serializers.ValidationError("a price book cannot take effect in the past (never retroactive)")
        return value

    def validate_components(self, value):
        meters = [c["meter"] for c in value]
        if len(set(meters)) != len(meters):
            raise serializers.ValidationError("each meter at most once")
        for component in value:
            bounds = [t.get("up_to") for t in component.get("tiers", [])]  # up_to is optional: unbounded
            if None in bounds[:-1]:
                raise serializers.ValidationError("only the last tier may be unbounded")
            finite = [b for b in bounds if b is not None]
            if finite != sorted(set(finite)):
                raise serializers.ValidationError("tier bounds must increase")
        return value

    def _write_components(self, book: PriceBook, components: list[dict]) -> None:
        for data in components:
            tiers = data.pop("tiers", [])
            component = PriceComponent(book=book, **data)
            component.save()
            for tier in tiers:
                PriceTier(component=component, **tier).save()

    def create(self, validated):
        components = validated.pop("components")
        try:
            with transaction.atomic():
                book = PriceBook(**validated)
                book.save()
                self._write_components(book, components)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return book

    def update(self, book, validated):
        components = validated.pop("components", None)
        try:
            with transaction.atomic():
                for key, value in validated.items():
                    setattr(book, key, value)
                book.save()
                if components is not None:
                    PriceComponent.objects.filter(book=book).delete()
                    self._write_components(book, components)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return book


class WebhookEndpointSerializer(serializers.ModelSerializer):
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEndpoint.EVENTS), required=False,
                                   help_text="events to receive; empty = all")

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "events", "active", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_url(self, value: str) -> str:
        from billing.webhooks import check_url

        if self.context.get("tenant_owned", True):
            check_url(value)
        return value


class WebhookEndpointSecretSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="the signing secret: shown only when created")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "at", "status_code", "error", "duration_ms"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)
    status = serializers.CharField(read_only=True, help_text="pending, delivered or failed")

    class Meta:
        model = WebhookDelivery
        fields = ["id", "endpoint", "event", "event_id", "status", "attempts", "last_status_code",
                  "next_attempt_at", "delivered_at", "created_at", "payload", "attempt_log"]


class CostLinkSerializer(serializers.Serializer):
    asset_id = serializers.CharField()
    vendor = serializers.CharField()
    currency = serializers.CharField()
    depreciation = serializers.DecimalField(max_digits=18, decimal_places=2)
    operating = serializers.DecimalField(max_digits=18, decimal_places=2)
    cost = serializers.DecimalField(max_digits=18, decimal_places=2)
    delivered_bits = serializers.IntegerField()
    key_rate_bps = serializers.FloatField(allow_null=True)
    utilisation = serializers.FloatField(allow_null=True)
    cost_per_mbit = serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True)
    revenue = serializers.DecimalField(max_digits=18, decimal_places=2)
    tenant_bits = serializers.DictField(child=serializers.IntegerField())


class CostReportSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    links = CostLinkSerializer(many=True)
    qrngs = CostLinkSerializer(many=True)
    tenant_cost = serializers.DictField(child=serializers.DecimalField(max_digits=18, decimal_places=2))
    tenant_bits = serializers.DictField(child=serializers.IntegerField())
    target_margin = serializers.DecimalField(max_digits=4, decimal_places=3)
    suggested_price_per_mbit = serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True)
    entropy_bytes = serializers.IntegerField()
    qrng_cost_per_gb = serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True)
    suggested_price_per_gb = serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True)
