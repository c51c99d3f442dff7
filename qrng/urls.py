from django.urls import path

from . import views

urlpatterns = [
    path("", views.entropy_page, name="entropy"),
    path("download", views.entropy_download, name="entropy-download"),
    path("quality/<uuid:report_id>/", views.quality_report_page, name="entropy-quality-report"),
]
