"""The billing API: thin views over ``billing.invoices``, ``billing.exports``, ``billing.costs``.

Tenants (scope ``billing:read``) see their own invoices, credit notes and webhook endpoints: the queryset is
always the request's tenant's, so another tenant's invoice is a 404. Operators (``IsOperator``) see and manage
everything under ``/api/billing/operator/``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import costs, exports, invoices
from billing.models import CreditNote, Invoice, PriceBook, WebhookDelivery, WebhookEndpoint
from portal.errors import BadRequest, NotFound
from tenants.api.base import IsOperator, OperatorViewSet, TenantAPIView, TenantScopedViewSet

from .serializers import (
    CostReportSerializer,
    CreditNoteCreateSerializer,
    CreditNoteSerializer,
    InvoiceDetailSerializer,
    InvoiceSerializer,
    PriceBookSerializer,
    WebhookDeliverySerializer,
    WebhookEndpointSecretSerializer,
    WebhookEndpointSerializer,
)

CSV = OpenApiResponse(OpenApiTypes.STR, description="text/csv: one row per line, then the total")
# Input the schema allows but the rules refuse (400, documented as such: tenants.schema)
WEBHOOK_REFUSAL = "bad input, or a webhook URL whose host does not resolve or resolves to a non-public address"
PRICE_BOOK_REFUSAL = ("bad input, or an unknown plan, an effective_from in the past, a meter twice, tier bounds "
                      "that do not increase, or a price book already in effect")
PDF = OpenApiResponse(OpenApiTypes.BINARY, description="application/pdf")


class InvoiceExportMixin:
    """``csv`` and ``pdf`` actions on an invoice viewset (JSON is the detail itself)."""

    def _download(self, body: bytes | str, content_type: str, invoice: Invoice, ext: str) -> HttpResponse:
        response = HttpResponse(body, content_type=content_type)
        name = invoice.number or f"draft-{invoice.period_start:%Y-%m-%d}"
        response["Content-Disposition"] = f'attachment; filename="{name}.{ext}"'
        return response

    @extend_schema(summary="The invoice as CSV", responses={200: CSV})
    @action(detail=True, methods=["get"])
    def csv(self, request, pk=None):
        invoice = self.get_object()
        return self._download(exports.invoice_csv(invoice), "text/csv; charset=utf-8", invoice, "csv")

    @extend_schema(summary="The invoice as PDF", responses={200: PDF})
    @action(detail=True, methods=["get"])
    def pdf(self, request, pk=None):
        invoice = self.get_object()
        return self._download(exports.invoice_pdf(invoice), "application/pdf", invoice, "pdf")


@extend_schema_view(
    list=extend_schema(summary="Your invoices (drafts and finalized), newest period first"),
    retrieve=extend_schema(summary="One of your invoices with its lines (the JSON export)"),
)
class InvoiceViewSet(InvoiceExportMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = Invoice
    read_scope = "billing:read"
    write_scope = "billing:read"

    def get_serializer_class(self):
        return InvoiceDetailSerializer if self.action == "retrieve" else InvoiceSerializer

    def scope_queryset(self, queryset):
        return queryset.select_related("tenant").prefetch_related("lines")


class DraftInvoiceView(TenantAPIView):
    read_scope = "billing:read"

    @extend_schema(summary="Your current period's draft invoice, re-rated now (the running total)",
                   responses=InvoiceDetailSerializer)
    def get(self, request):
        if not invoices.is_billable(self.tenant):
            raise NotFound("your plan has no price book: nothing is billed")
        invoice = invoices.refresh_draft(self.tenant)
        if invoice is None:  # cannot happen for the running period, but never show a finalized one as draft
            raise BadRequest("the current period is already finalized")
        return Response(InvoiceDetailSerializer(invoice).data)


@extend_schema_view(list=extend_schema(summary="Your credit notes"),
                    retrieve=extend_schema(summary="One of your credit notes"))
class CreditNoteViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = CreditNote
    read_scope = "billing:read"
    serializer_class = CreditNoteSerializer

    def scope_queryset(self, queryset):
        return queryset.select_related("invoice", "tenant").prefetch_related("lines")


@extend_schema_view(
    list=extend_schema(summary="Your webhook endpoints"),
    create=extend_schema(summary="Add a webhook endpoint; the response carries its signing secret, once",
                         responses=WebhookEndpointSecretSerializer),
    retrieve=extend_schema(summary="One webhook endpoint"),
    partial_update=extend_schema(summary="Change a webhook endpoint (URL, events, active)"),
    destroy=extend_schema(summary="Remove a webhook endpoint"),
)
class WebhookEndpointViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                             mixins.UpdateModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet):
    """Events for your tenant: ``invoice.finalized``, ``credit_note.issued``, ``quota.threshold`` (docs/billing.md
    tells how to verify the ``QXaaS-Signature`` header)."""

    model = WebhookEndpoint
    read_scope = "billing:read"
    write_scope = "tenant:admin"
    error_reasons = {"create": {400: WEBHOOK_REFUSAL}, "partial_update": {400: WEBHOOK_REFUSAL}}
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_serializer_class(self):
        return WebhookEndpointSecretSerializer if self.action == "create" else WebhookEndpointSerializer

    def perform_create(self, serializer) -> None:
        # Explicit: CreateModelMixin's perform_create comes first in the MRO and would save no tenant, which
        # would make this an operator endpoint receiving every tenant's events.
        serializer.save(tenant=self.tenant)


@extend_schema_view(list=extend_schema(summary="Deliveries to your webhook endpoints, each attempt recorded"),
                    retrieve=extend_schema(summary="One delivery with its attempts"))
class WebhookDeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = WebhookDelivery
    read_scope = "billing:read"
    serializer_class = WebhookDeliverySerializer

    def scope_queryset(self, queryset):
        return queryset.filter(endpoint__tenant_id=self.tenant.pk).prefetch_related("attempt_log")


# --- operators ---------------------------------------------------------------------------------------------

class OperatorReadOnlyViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = [permissions.IsAuthenticated, IsOperator]


@extend_schema_view(
    list=extend_schema(summary="All tenants' invoices (operators)", parameters=[
        OpenApiParameter("status", str, enum=["draft", "finalized"]), OpenApiParameter("tenant", str)]),
    retrieve=extend_schema(summary="Any invoice with its lines (operators)"),
)
class OperatorInvoiceViewSet(InvoiceExportMixin, OperatorReadOnlyViewSet):
    def get_queryset(self):
        qs = Invoice.objects.unscoped().select_related("tenant").prefetch_related("lines")
        if (status := self.request.query_params.get("status")) is not None:
            if status not in Invoice.Status.values:
                raise BadRequest(f"status must be one of {', '.join(Invoice.Status.values)}")
            qs = qs.filter(status=status)
        if tenant := self.request.query_params.get("tenant"):
            qs = qs.filter(tenant__slug=tenant)
        return qs

    def get_serializer_class(self):
        return InvoiceDetailSerializer if self.action == "retrieve" else InvoiceSerializer


@extend_schema_view(list=extend_schema(summary="All credit notes (operators)"),
                    retrieve=extend_schema(summary="Any credit note (operators)"),
                    create=extend_schema(summary="Issue a credit note against a finalized invoice (operators)",
                                         request=CreditNoteCreateSerializer, responses={201: CreditNoteSerializer}))
class OperatorCreditNoteViewSet(mixins.CreateModelMixin, OperatorReadOnlyViewSet):
    serializer_class = CreditNoteSerializer
    error_reasons = {"create": {400: "bad input, or no finalized invoice with this number, or a line that is not a "
                                     "positive amount in cents with a description",
                                409: "the invoice is not finalized, or credits would exceed its total"}}

    def get_queryset(self):
        return CreditNote.objects.unscoped().select_related("invoice", "tenant").prefetch_related("lines")

    def create(self, request, *args, **kwargs):
        data = CreditNoteCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        note = invoices.issue_credit_note(data.validated_data["invoice"], data.validated_data["reason"],
                                          [(line["description"], line["amount"])
                                           for line in data.validated_data["lines"]])
        return Response(CreditNoteSerializer(note).data, status=201)


@extend_schema_view(
    list=extend_schema(summary="Price books of every plan (operators)"),
    create=extend_schema(summary="Publish a price book for a plan from a future date (operators)"),
    retrieve=extend_schema(summary="One price book"),
    update=extend_schema(summary="Replace a price book that is not yet in effect"),
    partial_update=extend_schema(summary="Change a price book that is not yet in effect"),
    destroy=extend_schema(summary="Withdraw a price book that is not yet in effect"),
)
class PriceBookViewSet(OperatorViewSet):
    serializer_class = PriceBookSerializer
    error_reasons = {**{action: {400: PRICE_BOOK_REFUSAL} for action in ("create", "update", "partial_update")},
                     "destroy": {400: "this price book is already in effect and cannot be withdrawn"}}
    queryset = PriceBook.objects.select_related("plan").prefetch_related("components__tiers")

    def perform_destroy(self, instance):
        if instance.is_locked:
            raise BadRequest("this price book is already in effect and cannot be withdrawn")
        instance.delete()


@extend_schema_view(list=extend_schema(summary="Operator webhook endpoints (every tenant's events)"),
                    create=extend_schema(summary="Add an operator webhook endpoint; the secret is shown once",
                                         responses=WebhookEndpointSecretSerializer),
                    retrieve=extend_schema(summary="One operator webhook endpoint"),
                    partial_update=extend_schema(summary="Change an operator webhook endpoint"),
                    destroy=extend_schema(summary="Remove an operator webhook endpoint"))
class OperatorWebhookEndpointViewSet(OperatorViewSet):
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    error_reasons = {"create": {400: WEBHOOK_REFUSAL}, "partial_update": {400: WEBHOOK_REFUSAL}}

    def get_queryset(self):
        return WebhookEndpoint.objects.unscoped().filter(tenant__isnull=True)

    def get_serializer_class(self):
        return WebhookEndpointSecretSerializer if self.action == "create" else WebhookEndpointSerializer

    def perform_create(self, serializer):
        serializer.save(tenant=None)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "tenant_owned": False}  # the operator's own: trusted


def _parse_window(params) -> tuple:
    now = timezone.now()
    start, end = costs.default_window(now)
    if params.get("start"):
        start = parse_datetime(params["start"])
    if params.get("end"):
        end = parse_datetime(params["end"])
    if start is None or end is None or timezone.is_naive(start) or timezone.is_naive(end) or start >= end:
        raise BadRequest("start and end are ISO 8601 instants with a time zone, start before end")
    try:
        margin = Decimal(params.get("margin", "0.3"))
    except InvalidOperation:
        raise BadRequest("margin is a decimal between 0 and 1") from None
    if not 0 <= margin < 1:
        raise BadRequest("margin is a decimal between 0 and 1")
    return start, end, margin


def report_data(report: costs.CostReport, margin: Decimal) -> dict:
    def asset(r):
        return {"asset_id": r.asset.asset_id, "vendor": r.asset.vendor, "currency": r.asset.currency,
                "depreciation": r.depreciation, "operating": r.operating, "cost": r.cost,
                "delivered_bits": r.delivered_bits, "key_rate_bps": r.key_rate_bps,
                "utilisation": report.utilisation(r), "cost_per_mbit": r.cost_per_mbit, "revenue": r.revenue,
                "tenant_bits": r.tenant_bits}

    return {"start": report.start, "end": report.end, "links": [asset(r) for r in report.links],
            "qrngs": [asset(r) for r in report.qrngs], "tenant_cost": report.tenant_cost,
            "tenant_bits": report.tenant_bits, "target_margin": margin,
            "suggested_price_per_mbit": report.suggested_price_per_mbit(margin),
            "entropy_bytes": report.entropy_bytes, "qrng_cost_per_gb": report.qrng_cost_per_gb,
            "suggested_price_per_gb": report.suggested_price_per_gb(margin)}


class CostReportView(APIView):
    permission_classes = [permissions.IsAuthenticated, IsOperator]
    error_reasons = {"get": {400: "bad input, or start not before end"}}

    @extend_schema(summary="Cost per delivered key bit per link and per tenant, revenue against depreciation, "
                           "suggested key price for a target margin (operators)",
                   parameters=[OpenApiParameter("start", OpenApiTypes.DATETIME, description="default: 30 days ago"),
                               OpenApiParameter("end", OpenApiTypes.DATETIME, description="default: now"),
                               OpenApiParameter("margin", {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                                                description="0 <= margin < 1, default 0.3")],
                   responses=CostReportSerializer)
    def get(self, request):
        start, end, margin = _parse_window(request.query_params)
        return Response(CostReportSerializer(report_data(costs.cost_report(start, end), margin)).data)
