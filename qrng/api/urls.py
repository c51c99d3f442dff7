from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash="/?")
router.register("entropy/quality-reports", views.QualityReportViewSet, basename="api-entropy-quality-report")

urlpatterns = [
    re_path(r"^entropy/?$", views.EntropyView.as_view(), name="api-entropy"),
    re_path(r"^entropy/anu/?$", views.AnuView.as_view(), name="api-entropy-anu"),
    re_path(r"^entropy/anu/API/jsonI\.php$", views.AnuLegacyPathView.as_view(), name="api-entropy-anu-legacy"),
    re_path(r"^entropy/capabilities/?$", views.CapabilitiesView.as_view(), name="api-entropy-capabilities"),
    path("entropy/sources/<str:name>/reset", views.SourceResetView.as_view(), name="api-entropy-source-reset"),
    re_path(r"^entropy/quality-reports/(?P<pk>[0-9a-f-]{36})/plot\.svg$",
            views.QualityReportViewSet.as_view({"get": "plot"}), name="api-entropy-quality-report-plot"),
    *router.urls,
]
