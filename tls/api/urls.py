from django.urls import re_path

from . import views

UUID = r"(?P<uuid>[0-9a-fA-F-]{32,36})"

# Like /api/qkd/: no trailing slash needed (scripts and curl).
urlpatterns = [
    re_path(r"^tls/sessions/?$", views.TlsSessionViewSet.as_view({"get": "list", "post": "create"}),
            name="tls-session-list"),
    re_path(rf"^tls/sessions/{UUID}/?$", views.TlsSessionViewSet.as_view({"get": "retrieve"}),
            name="tls-session-detail"),
    re_path(rf"^tls/sessions/{UUID}/close/?$", views.TlsSessionViewSet.as_view({"post": "close"}),
            name="tls-session-close"),
    re_path(rf"^tls/sessions/{UUID}/rotate/?$", views.TlsSessionViewSet.as_view({"post": "rotate"}),
            name="tls-session-rotate"),
    re_path(rf"^tls/sessions/{UUID}/endpoint-key/?$", views.EndpointKeyView.as_view(), name="tls-endpoint-key"),
]
