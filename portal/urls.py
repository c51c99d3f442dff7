"""The shell's URLs: health, sign-in, admin, the OpenAPI pages; every app's pages and API are included."""

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from .api.root import api_root
from .health import healthz, readyz
from .metrics import metrics_view

# The admin signs in through allauth, so MFA covers operators there too.
admin.site.login = login_required(admin.site.login)
admin.site.site_header = "QXaaS administration"

urlpatterns = [
    path("", include("tenants.urls")),
    path("services/", include("services.urls")),
    path("operator/", include("services.operator_urls")),  # network operations (tenants' operator pages: tenants.urls)
    path("entropy/", include("qrng.urls")),
    path("tunnels/", include("ipsec.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/", api_root, name="api-root"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/", include("tenants.api.urls")),
    path("api/", include("services.api.urls")),
    path("api/", include("qrng.api.urls")),
    path("api/", include("ipsec.api.urls")),
    path("api/", include("tls.api.urls")),
    path("tls/", include("tls.urls")),
    path("api/", include("billing.api.urls")),
    path("billing/", include("billing.urls")),
]

handler404 = "portal.errors.page_not_found"  # JSON in the error shape under /api/
handler500 = "portal.errors.server_error"  # a dependency that is away: 503 with Retry-After
