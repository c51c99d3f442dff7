from django.contrib import admin

from .models import QualityReport, SourceAlarm


@admin.register(SourceAlarm)
class SourceAlarmAdmin(admin.ModelAdmin):
    list_display = ("created_at", "source", "test", "sample_index", "reset_at")
    list_filter = ("source", "test")
    readonly_fields = [f.name for f in SourceAlarm._meta.fields]


@admin.register(QualityReport)
class QualityReportAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "state", "progress", "n_bytes", "created_at")
    list_filter = ("state",)
    readonly_fields = [f.name for f in QualityReport._meta.fields]

    def get_queryset(self, request):
        return QualityReport.objects.unscoped()  # operators see every tenant's reports
