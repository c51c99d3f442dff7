from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from . import etsi014, views

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
    path("qkd/nodes/", views.NodeListView.as_view(), name="qkd-nodes"),
    path("qkd/keys", views.SimpleKeyView.as_view(), name="qkd-keys"),
    path("qkd/keys/<str:key_id>", views.SimplePeerKeyView.as_view(), name="qkd-peer-key"),
    *router.urls,
]
