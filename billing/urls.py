from django.urls import path

from . import views

urlpatterns = [
    path("", views.tenant_billing, name="billing"),
    path("operator/", views.operator_billing, name="billing-operator"),
]
