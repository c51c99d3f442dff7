from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from services.api.network_views import NetworkView

from . import views

# The admin signs in through allauth, so MFA covers operators there too.
admin.site.login = login_required(admin.site.login)
admin.site.site_header = "QXaaS administration"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("tokens/", views.token_page, name="tokens"),
    path("usage/", views.usage_page, name="usage"),
    path("services/", views.services_page, name="services"),
    path("entropy/", include("qrng.urls")),
    path("operator/tenants/", views.operator_tenants, name="operator-tenants"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/", views.api_root, name="api-root"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/", include("tenants.api.urls")),
    path("api/qkd/network/", NetworkView.as_view(), name="qkd-network"),
    path("api/", include("services.api.urls")),
    path("api/", include("qrng.api.urls")),
]

handler500 = "portal.views.server_error"  # a dependency that is away: 503 with Retry-After
