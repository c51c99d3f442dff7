"""Operators' view of the gateway in the Django admin: nodes, SAEs, delivered key IDs and key streams.

Read-mostly: key IDs and streams are the metering trail, so they are shown, never edited or deleted here
(a stream is closed through ETSI 004 ``close`` or expires; SAEs are managed by their tenants).
"""

from __future__ import annotations

from django.contrib import admin

from .models import KeyDelivery, KeyStream, QkdNode, Sae


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return self.model.objects.unscoped()  # operators see every tenant's rows (deliberately unscoped)


@admin.register(QkdNode)
class QkdNodeAdmin(admin.ModelAdmin):
    list_display = ["node_id", "site", "kme_url", "auth_mode", "source", "enabled"]
    list_filter = ["enabled", "source", "auth_mode"]
    search_fields = ["node_id", "site"]


@admin.register(Sae)
class SaeAdmin(ReadOnlyAdmin):
    list_display = ["name", "tenant", "node", "cert_fingerprint", "cert_not_after", "created_at"]
    list_filter = ["node"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant", "node"]


@admin.register(KeyDelivery)
class KeyDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["first_key_id", "tenant", "master", "slave", "key_count", "size_bits", "hops", "fetched_keys",
                    "created_at"]
    exclude = ["backend_key_ids"]  # the KME's key IDs stay out of view (tenants only know the sealed ones)
    search_fields = ["tenant__slug", "master__name", "slave__name"]
    list_select_related = ["tenant", "master", "slave"]
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(KeyStream)
class KeyStreamAdmin(ReadOnlyAdmin):
    list_display = ["ksid", "tenant", "source", "destination", "state", "chunks_metered", "highest_index",
                    "created_at", "expires_at", "closed_at"]
    list_filter = ["state"]
    search_fields = ["ksid", "backend_ksid", "tenant__slug"]
    list_select_related = ["tenant", "source", "destination"]
    readonly_fields = [f.name for f in KeyStream._meta.fields]
