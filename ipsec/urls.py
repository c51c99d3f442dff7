from django.urls import path

from . import views

urlpatterns = [
    path("", views.tunnels_page, name="tunnels"),
    path("live/", views.live_fragment, name="tunnels-live"),
]
