from django.contrib import admin

from .models import TlsRotation, TlsSession


class TlsRotationInline(admin.TabularInline):
    model = TlsRotation
    extra = 0
    can_delete = False
    readonly_fields = ["key_id", "size_bits", "reason", "created_at", "retired_at"]


@admin.register(TlsSession)
class TlsSessionAdmin(admin.ModelAdmin):
    """Operators see sessions and key IDs; state changes go through the API (they run processes)."""

    list_display = ["uuid", "tenant", "state", "mode", "node_a", "node_b", "client_port", "server_port", "key_id",
                    "restarts", "created_at"]
    list_filter = ["state", "mode"]
    search_fields = ["uuid", "key_id", "tenant__slug"]
    inlines = [TlsRotationInline]
    readonly_fields = [f.name for f in TlsSession._meta.fields]

    def get_queryset(self, request):
        return TlsSession.objects.unscoped().select_related("tenant", "node_a", "node_b")

    def has_add_permission(self, request) -> bool:
        return False
