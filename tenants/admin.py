from django.contrib import admin

from . import audit
from .models import ApiToken, AuditEvent, Membership, Plan, PlanQuota, Tenant, TenantQuotaOverride, UsageRecord


class UnscopedAdmin(admin.ModelAdmin):
    """Operators see every tenant's rows: the admin is the one place that deliberately reads unscoped."""

    def get_queryset(self, request):
        return self.model.objects.unscoped()


class PlanQuotaInline(admin.TabularInline):
    model = PlanQuota
    extra = 0


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    inlines = [PlanQuotaInline]


class OverrideInline(admin.TabularInline):
    model = TenantQuotaOverride
    extra = 0

    def get_queryset(self, request):
        return TenantQuotaOverride.objects.unscoped()


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "status", "plan", "created_at"]
    list_filter = ["status", "plan"]
    search_fields = ["name", "slug"]
    inlines = [OverrideInline]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and form.changed_data:  # the admin edits rows directly: record what it changed
            audit.record("tenant.changed_in_admin", tenant=obj, obj=obj,
                         details={name: str(form.cleaned_data.get(name)) for name in form.changed_data})


@admin.register(AuditEvent)
class AuditEventAdmin(UnscopedAdmin):
    list_display = ["created_at", "actor", "tenant", "action", "object_type", "object_id", "ip"]
    list_filter = ["action", "actor_type"]
    search_fields = ["actor", "object_id", "request_id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Membership)
class MembershipAdmin(UnscopedAdmin):
    list_display = ["user", "tenant", "role"]
    list_filter = ["role"]


@admin.register(ApiToken)
class ApiTokenAdmin(UnscopedAdmin):
    list_display = ["prefix", "name", "tenant", "user", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["key", "secret_hash", "pepper_id", "last_used_at", "created_at"]
    exclude = []

    def has_add_permission(self, request):
        return False  # tokens are created through the portal, which shows the secret once


@admin.register(UsageRecord)
class UsageRecordAdmin(UnscopedAdmin):
    list_display = ["created_at", "tenant", "meter", "kind", "quantity", "unit", "reference"]
    list_filter = ["meter", "kind"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
