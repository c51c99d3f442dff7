from django.contrib import admin

from .models import IpsecGateway, Tunnel, TunnelKeyEvent


@admin.register(IpsecGateway)
class IpsecGatewayAdmin(admin.ModelAdmin):
    list_display = ("node_id", "address", "vici_uri", "source", "enabled", "reachable", "checked_at")
    list_filter = ("source", "enabled", "reachable")


class KeyEventInline(admin.TabularInline):
    model = TunnelKeyEvent
    extra = 0
    readonly_fields = ("kind", "key_id", "key_bits", "ok", "error", "duration_ms", "ike_sa_id", "at")
    can_delete = False


@admin.register(Tunnel)
class TunnelAdmin(admin.ModelAdmin):
    list_display = ("uuid", "tenant", "state", "node_a", "subnet_a", "node_b", "subnet_b", "rekey_count",
                    "created_at")
    list_filter = ("state", "node_a", "node_b")
    search_fields = ("uuid", "tenant__slug", "current_key_id")
    readonly_fields = [f.name for f in Tunnel._meta.fields]
    inlines = [KeyEventInline]

    def get_queryset(self, request):
        return Tunnel.objects.unscoped().select_related("tenant")
