from django.urls import path

from . import views

urlpatterns = [
    path("", views.services_page, name="services"),
    path("saes/<str:name>/", views.sae_page, name="sae"),
    path("saes/<str:name>/<str:action>", views.sae_action, name="sae-action"),
    path("network/", views.network_page, name="network"),
    path("network/fragment", views.network_fragment, name="network-fragment"),
    path("network/links/<str:link_id>/", views.link_page, name="link"),
    path("network/links/<str:link_id>/fragment", views.link_fragment, name="link-fragment"),
    path("streams/", views.streams_page, name="streams"),
    path("streams/<uuid:ksid>/", views.stream_page, name="stream"),
    path("streams/<uuid:ksid>/fragment", views.stream_fragment, name="stream-fragment"),
    path("streams/<uuid:ksid>/<str:action>", views.stream_action, name="stream-action"),
    path("live/", views.live_fragment, name="services-live"),
]
