from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.register("billing/invoices", views.InvoiceViewSet, basename="billing-invoice")
router.register("billing/credit-notes", views.CreditNoteViewSet, basename="billing-credit-note")
router.register("billing/webhooks", views.WebhookEndpointViewSet, basename="billing-webhook")
router.register("billing/webhook-deliveries", views.WebhookDeliveryViewSet, basename="billing-webhook-delivery")
router.register("billing/operator/invoices", views.OperatorInvoiceViewSet, basename="billing-operator-invoice")
router.register("billing/operator/credit-notes", views.OperatorCreditNoteViewSet,
                basename="billing-operator-credit-note")
router.register("billing/operator/price-books", views.PriceBookViewSet, basename="billing-price-book")
router.register("billing/operator/webhooks", views.OperatorWebhookEndpointViewSet, basename="billing-operator-webhook")

urlpatterns = [
    path("billing/draft/", views.DraftInvoiceView.as_view(), name="billing-draft"),
    path("billing/operator/costs/", views.CostReportView.as_view(), name="billing-costs"),
    *router.urls,
]
