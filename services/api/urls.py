from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from . import etsi004, etsi014, views
from .network_views import NetworkView, OperatorNetworkView, TwinLinkAdminView

router = SimpleRouter(trailing_slash="/?")
router.register("saes", views.SaeViewSet, basename="sae")

SAE_ID = r"(?P<{}>[^/]+)"

urlpatterns = [
    # ETSI GS QKD 014 at its standard paths (no trailing slash, as the standard writes them).
    re_path(r"^v1/keys/" + SAE_ID.format("slave_sae_id") + r"/status/?$", etsi014.StatusView.as_view(),
            name="etsi014-status"),
    re_path(r"^v1/keys/" + SAE_ID.format("slave_sae_id") + r"/enc_keys/?$", etsi014.EncKeysView.as_view(),
            name="etsi014-enc-keys"),
    re_path(r"^v1/keys/" + SAE_ID.format("master_sae_id") + r"/dec_keys/?$", etsi014.DecKeysView.as_view(),
            name="etsi014-dec-keys"),
    path("qkd/network/", NetworkView.as_view(), name="qkd-network"),
    path("operator/network/", OperatorNetworkView.as_view(), name="operator-network-api"),
    path("operator/network/links/<str:link_id>/<str:action>", TwinLinkAdminView.as_view(), name="twin-link-admin"),
    path("qkd/nodes/", views.NodeListView.as_view(), name="qkd-nodes"),
    path("qkd/keys", views.SimpleKeyView.as_view(), name="qkd-keys"),
    path("qkd/keys/<str:key_id>", views.SimplePeerKeyView.as_view(), name="qkd-peer-key"),
    # Like the other /api/qkd/ paths: no trailing slash needed (scripts and curl).
    re_path(r"^qkd/streams/?$", views.KeyStreamViewSet.as_view({"get": "list"}), name="key-stream-list"),
    re_path(r"^qkd/streams/(?P<ksid>[0-9a-fA-F-]{32,36})/?$", views.KeyStreamViewSet.as_view({"get": "retrieve"}),
            name="key-stream-detail"),
    *router.urls,
    # ETSI GS QKD 004 key streams, as REST like the Madrid SD-QKD stack (open_connect / get_key / close).
    re_path(r"^etsi004/open_connect/?$", etsi004.OpenConnectView.as_view(), name="etsi004-open-connect"),
    re_path(r"^etsi004/get_key/?$", etsi004.GetKeyView.as_view(), name="etsi004-get-key"),
    re_path(r"^etsi004/close/?$", etsi004.CloseView.as_view(), name="etsi004-close"),
]
