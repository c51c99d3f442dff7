from django.urls import path

from . import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("tokens/", views.token_page, name="tokens"),
    path("usage/", views.usage_page, name="usage"),
    path("operator/tenants/", views.operator_tenants, name="operator-tenants"),
    path("invitations/", views.invitations_page, name="invitations"),
]
