"""Operator pages of the services app, mounted under ``/operator/``."""

from django.urls import path

from . import operator_views

urlpatterns = [
    path("network/", operator_views.network_page, name="operator-network"),
    path("network/live/", operator_views.network_live, name="operator-network-live"),
    path("network/links/<str:link_id>/", operator_views.link_action, name="operator-network-link"),
]
