from django.contrib import admin

from .models import ApiToken, Membership, Plan, PlanQuota, Tenant, TenantQuotaOverride, UsageRecord


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
