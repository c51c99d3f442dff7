from django.urls import path

from . import views

urlpatterns = [
    path("", views.sessions_page, name="tls-sessions"),
    path("live/", views.live_fragment, name="tls-live"),
    path("<uuid:session_uuid>/", views.sessions_page, name="tls-session"),
]
