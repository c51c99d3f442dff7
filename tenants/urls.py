from django.urls import path

from . import operator_views, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("fragments/usage/", views.dashboard_usage_fragment, name="dashboard-usage"),
    path("tokens/", views.token_page, name="tokens"),
    path("usage/", views.usage_page, name="usage"),
    path("audit/", operator_views.tenant_audit_page, name="audit"),
    path("operator/tenants/", operator_views.tenants_page, name="operator-tenants"),
    path("operator/tenants/<slug:slug>/", operator_views.tenant_page, name="operator-tenant"),
    path("operator/plans/", operator_views.plans_page, name="operator-plans"),
    path("operator/audit/", operator_views.audit_page, name="operator-audit"),
    path("invitations/", views.invitations_page, name="invitations"),
]
