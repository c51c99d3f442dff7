from __future__ import annotations

from rest_framework import serializers

from tenants.meters import QUOTA_KEYS, UNLIMITED
from tenants.models import ApiToken, AuditEvent, Invitation, Membership, Plan, Scope, Tenant, UsageRecord


def _validate_limits(value: dict) -> dict:
    if not isinstance(value, dict):
        raise serializers.ValidationError("an object {quota_key: limit} is expected")
    unknown = sorted(set(value) - set(QUOTA_KEYS))
    if unknown:
        raise serializers.ValidationError(f"unknown quota keys {unknown}; known: {QUOTA_KEYS}")
    for key, limit in value.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < UNLIMITED:
            raise serializers.ValidationError(f"{key}: the limit must be an integer >= -1 (-1 = unlimited)")
    return value


class PlanSerializer(serializers.ModelSerializer):
    limits = serializers.JSONField(
        required=False, help_text="{quota_key: limit}; -1 = unlimited; keys not listed are 0 (not included)"
    )

    class Meta:
        model = Plan
        fields = ["id", "name", "slug", "description", "limits", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_limits(self, value):
        return _validate_limits(value)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["limits"] = instance.limits()
        return data


class TenantSerializer(serializers.ModelSerializer):
    plan = serializers.SlugRelatedField(slug_field="slug", queryset=Plan.objects.all())
    quota_overrides = serializers.JSONField(
        required=False, help_text="operators: {quota_key: limit} replacing the plan's limit for this tenant"
    )

    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "status", "plan", "quota_overrides", "created_at"]
        read_only_fields = ["id", "status", "created_at"]

    def validate_quota_overrides(self, value):
        return _validate_limits(value)


class UserSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class MembershipSerializer(serializers.ModelSerializer):
    """A member (no email: members join by invitation, and the listing does not publish addresses)."""

    user = UserSummarySerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]
        read_only_fields = ["id", "user", "created_at"]


class InvitationSerializer(serializers.ModelSerializer):
    """An invitation as its tenant's admins see it: the handle they typed, never the account behind it."""

    username = serializers.CharField(write_only=True, required=False, help_text="invite a user by username…")
    email = serializers.EmailField(write_only=True, required=False, help_text="…or by email")
    invited_by = serializers.CharField(source="invited_by.username", read_only=True, default=None)
    status = serializers.CharField(read_only=True, help_text="pending, accepted, declined or revoked")

    class Meta:
        model = Invitation
        fields = ["id", "invitee", "username", "email", "role", "status", "invited_by", "created_at", "expires_at"]
        read_only_fields = ["id", "invitee", "status", "invited_by", "created_at", "expires_at"]

    def validate(self, attrs):
        username, email = attrs.pop("username", None), attrs.pop("email", None)
        if bool(username) == bool(email):
            raise serializers.ValidationError("give either the username or the email of the user to invite")
        attrs["invitee"] = username or email
        return attrs


class MyInvitationSerializer(serializers.ModelSerializer):
    """An invitation as the invited user sees it."""

    tenant = serializers.CharField(source="tenant.slug")
    tenant_name = serializers.CharField(source="tenant.name")
    invited_by = serializers.CharField(source="invited_by.username", default=None)
    status = serializers.CharField(help_text="pending, accepted, declined or revoked")

    class Meta:
        model = Invitation
        fields = ["id", "tenant", "tenant_name", "role", "status", "invited_by", "created_at", "expires_at"]
        read_only_fields = fields


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    is_operator = serializers.BooleanField()
    memberships = serializers.ListField(child=serializers.DictField())
    token = serializers.DictField(allow_null=True)


class TextField(serializers.CharField):
    """A CharField that takes text only: DRF's own reads a JSON number as its digits, which the schema (a
    string) does not allow."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ApiTokenSerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(read_only=True)
    name = TextField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False)
    user = serializers.CharField(source="user.username", read_only=True)
    is_usable = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id", "prefix", "name", "user", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at",
            "is_usable",
        ]
        read_only_fields = ["id", "prefix", "user", "created_at", "revoked_at", "last_used_at", "is_usable"]


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="the secret token; shown only in this response")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class QuotaStateSerializer(serializers.Serializer):
    quota_key = serializers.CharField()
    meter = serializers.CharField()
    window = serializers.CharField()
    unit = serializers.CharField()
    limit = serializers.IntegerField(help_text="-1 = unlimited")
    used = serializers.IntegerField()
    remaining = serializers.IntegerField(allow_null=True, help_text="null when unlimited")
    reset_at = serializers.DateTimeField(allow_null=True, help_text="end of the window; null for concurrent")


class UsageRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageRecord
        fields = ["id", "meter", "kind", "quantity", "unit", "reference", "idempotency_key", "order_id", "created_at"]



class AuditEventSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor_type", "actor", "tenant", "action", "object_type", "object_id",
                  "details", "request_id", "ip"]
        read_only_fields = fields
