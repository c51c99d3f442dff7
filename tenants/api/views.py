from __future__ import annotations

import csv
from collections.abc import Iterator

from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.errors import BadRequest, Forbidden
from tenants import audit, quota, services, tokens
from tenants.api.base import IsOperator, OperatorViewSet, TenantAPIView, TenantScopedViewSet
from tenants.meters import METERS
from tenants.models import MANAGING_ROLES, ApiToken, AuditEvent, Invitation, Membership, Plan, Tenant, UsageRecord

from .serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenSerializer,
    AuditEventSerializer,
    InvitationSerializer,
    MembershipSerializer,
    MeSerializer,
    MyInvitationSerializer,
    PlanSerializer,
    QuotaStateSerializer,
    TenantSerializer,
    UsageRecordSerializer,
)

TOKEN_EXAMPLE = OpenApiExample(
    "Create a token",
    value={"name": "ci-script", "scopes": ["keys:write", "billing:read"], "expires_at": "2027-01-01T00:00:00Z"},
    request_only=True,
)


class MeView(APIView):
    @extend_schema(
        summary="The current user, their memberships and (for token requests) the token",
        responses=MeSerializer,
        examples=[
            OpenApiExample(
                "Researcher",
                value={
                    "id": 7, "username": "alice", "email": "alice@example.org", "is_operator": False,
                    "memberships": [{"tenant": "upm-lab", "name": "UPM lab", "role": "owner"}],
                    "token": {"prefix": "qx_3f2a9c01b7de", "tenant": "upm-lab", "scopes": ["billing:read"]},
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        user = request.user
        token = request.auth if isinstance(request.auth, ApiToken) else None
        memberships = Membership.objects.unscoped().select_related("tenant").filter(user=user)
        if token is not None:  # a token only speaks for its own tenant
            memberships = memberships.filter(tenant_id=token.tenant_id)
        return Response(
            {
                "id": user.pk, "username": user.username, "email": user.email, "is_operator": user.is_staff,
                "memberships": [
                    {"tenant": m.tenant.slug, "name": m.tenant.name, "role": m.role} for m in memberships
                ],
                "token": None if token is None
                else {"prefix": token.prefix, "tenant": token.tenant.slug, "scopes": token.scopes},
            }
        )


@extend_schema_view(
    list=extend_schema(summary="Tenants: all for operators, your own for members"),
    retrieve=extend_schema(summary="One tenant"),
    create=extend_schema(
        summary="Create a tenant (operators)",
        examples=[OpenApiExample("Tenant", value={"name": "UPM lab", "slug": "upm-lab", "plan": "research"},
                                 request_only=True)],
    ),
    update=extend_schema(summary="Update a tenant (operators)"),
    partial_update=extend_schema(summary="Update a tenant (operators)"),
    destroy=extend_schema(summary="Delete a tenant with no usage (operators)"),
)
class TenantViewSet(viewsets.ModelViewSet):
    serializer_class = TenantSerializer
    lookup_field = "slug"
    error_reasons = {"create": {400: "bad input, or an unknown plan", 409: "a tenant with this slug exists"},
                     "update": {400: "bad input, or an unknown plan"}, "partial_update": {400: "bad input, or an "
                                                                                           "unknown plan"},
                     "destroy": {400: "the tenant has usage records (billing history): suspend it instead"}}

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return [permissions.IsAuthenticated()]
        return [permissions.IsAuthenticated(), IsOperator()]

    def get_queryset(self):
        qs = Tenant.objects.select_related("plan")
        if getattr(self, "swagger_fake_view", False):
            return qs.none()
        user, token = self.request.user, self.request.auth if isinstance(self.request.auth, ApiToken) else None
        if IsOperator().has_permission(self.request, self):
            return qs
        if token is not None:
            return qs.filter(pk=token.tenant_id)
        member_of = Membership.objects.unscoped().filter(user=user).values("tenant_id")
        return qs.filter(pk__in=member_of)

    def to_representation_with_overrides(self, tenant: Tenant) -> dict:
        data = TenantSerializer(tenant, context=self.get_serializer_context()).data
        data["quota_overrides"] = services.quota_overrides(tenant)
        return data

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([self.to_representation_with_overrides(t) for t in page])

    def retrieve(self, request, *args, **kwargs):
        return Response(self.to_representation_with_overrides(self.get_object()))

    def perform_create(self, serializer):
        overrides = serializer.validated_data.pop("quota_overrides", None)
        d = serializer.validated_data
        serializer.instance = services.create_tenant(d["name"], d["slug"], d["plan"])
        if overrides is not None:
            services.set_quota_overrides(serializer.instance, overrides)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.perform_create(serializer)
        return Response(self.to_representation_with_overrides(serializer.instance), status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        overrides = serializer.validated_data.pop("quota_overrides", None)
        d = serializer.validated_data
        services.update_tenant(serializer.instance, name=d.get("name"), plan=d.get("plan"), slug=d.get("slug"))
        if overrides is not None:
            services.set_quota_overrides(serializer.instance, overrides)

    def update(self, request, *args, **kwargs):
        super().update(request, *args, **kwargs)
        return Response(self.to_representation_with_overrides(self.get_object()))

    def perform_destroy(self, instance):
        if UsageRecord.objects.for_tenant(instance).exists():
            raise BadRequest("this tenant has usage records (billing history); suspend it instead")
        audit.record("tenant.deleted", object_type="tenant", object_id=instance.slug)
        instance.delete()

    @extend_schema(summary="Suspend a tenant: its tokens and services stop working", request=None)
    @action(detail=True, methods=["post"])
    def suspend(self, request, slug=None):
        return Response(self.to_representation_with_overrides(services.set_status(self.get_object(), "suspended")))

    @extend_schema(summary="Re-activate a suspended tenant", request=None)
    @action(detail=True, methods=["post"])
    def activate(self, request, slug=None):
        return Response(self.to_representation_with_overrides(services.set_status(self.get_object(), "active")))


@extend_schema_view(
    list=extend_schema(summary="Plans (operators)"),
    retrieve=extend_schema(summary="One plan with its limits (operators)"),
    update=extend_schema(summary="Replace a plan (operators)"),
    partial_update=extend_schema(summary="Change a plan's name or limits (operators)"),
    destroy=extend_schema(summary="Delete a plan no tenant is on (operators)"),
    create=extend_schema(
        summary="Create a plan (operators)",
        examples=[
            OpenApiExample(
                "Research plan",
                value={"name": "Research", "slug": "research", "limits": {
                    "qkd_key_bits.day": 10_000_000, "qkd_key_bits.month": 200_000_000,
                    "entropy_bytes.day": 100_000_000, "entropy_bytes.month": 1_000_000_000,
                    "ipsec_tunnels": 2, "tls_sessions": 10, "key_streams": 4}},
                request_only=True,
            )
        ],
    ),
)
class PlanViewSet(OperatorViewSet):
    serializer_class = PlanSerializer
    error_reasons = {action: {400: "bad input, or a slug another plan has"} for action in ("create", "update",
                                                                                           "partial_update")}
    error_reasons["destroy"] = {400: "tenants are on this plan; move them first"}
    queryset = Plan.objects.prefetch_related("quotas")
    lookup_field = "slug"

    def perform_create(self, serializer):
        d = serializer.validated_data
        serializer.instance = services.create_plan(d["name"], d["slug"], d.pop("limits", {}),
                                                   d.get("description", ""))

    def perform_update(self, serializer):
        limits = serializer.validated_data.pop("limits", None)
        plan = serializer.save()
        if limits is not None:
            services.set_plan_limits(plan, limits)

    def perform_destroy(self, instance):
        if instance.tenants.exists():
            raise BadRequest("tenants are on this plan; move them first")
        audit.record("plan.deleted", object_type="plan", object_id=instance.slug)
        instance.delete()


@extend_schema_view(
    list=extend_schema(summary="Members of the current tenant"),
    retrieve=extend_schema(summary="One member of the current tenant"),
    partial_update=extend_schema(summary="Change a member's role (owners and admins); their tokens are narrowed"),
    destroy=extend_schema(summary="Remove a member (owners and admins); their tokens here are revoked"),
)
class MembershipViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """Members join by accepting an invitation (``/api/invitations/``), never by being added."""

    model = Membership
    serializer_class = MembershipSerializer
    error_reasons = {"create": {400: "bad input: neither username nor email, or no such user",
                                409: "already a member"},
                     "partial_update": {409: "a tenant keeps at least one owner"},
                     "destroy": {409: "a tenant keeps at least one owner"}}
    write_scope = "tenant:admin"
    write_roles = set(MANAGING_ROLES)
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def scope_queryset(self, queryset):
        return queryset.select_related("user")

    def perform_update(self, serializer):
        services.change_role(serializer.instance, serializer.validated_data.get("role", serializer.instance.role),
                             self.tenant_context.role)

    def perform_destroy(self, instance):
        services.remove_member(instance, self.tenant_context.role)


@extend_schema_view(
    list=extend_schema(summary="Invitations of the current tenant (owners and admins)"),
    retrieve=extend_schema(summary="One invitation"),
    create=extend_schema(
        summary="Invite a user by username or email; they join when they accept (the answer is the same "
                "whether or not such a user exists)",
        examples=[OpenApiExample("Invite", value={"username": "bob", "role": "member"}, request_only=True)],
    ),
    destroy=extend_schema(summary="Withdraw a pending invitation"),
)
class InvitationViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    model = Invitation
    serializer_class = InvitationSerializer
    error_reasons = {"create": {400: "bad input: neither the username nor the email of the user to invite"}}
    read_scope = "tenant:admin"
    write_scope = "tenant:admin"
    write_roles = set(MANAGING_ROLES)

    def scope_queryset(self, queryset):
        return queryset.select_related("invited_by")

    def perform_create(self, serializer):
        d = serializer.validated_data
        serializer.instance = services.invite(self.tenant, d["invitee"], d.get("role", "member"), self.request.user,
                                              self.tenant_context.role)

    def perform_destroy(self, instance):
        services.revoke_invitation(instance)


def _session_user(request):
    """Answering an invitation joins another tenant: a tenant-bound token cannot speak for that."""
    if isinstance(request.auth, ApiToken):
        raise Forbidden("answer invitations signed in (web session), not with an API token")
    return request.user


TOKEN_REFUSED = {403: "answered with an API token: invitations are answered signed in (web session)"}


class MyInvitationsView(APIView):
    error_reasons = {"get": TOKEN_REFUSED}
    @extend_schema(summary="Your pending invitations (signed-in session)", responses=MyInvitationSerializer(many=True))
    def get(self, request):
        return Response(MyInvitationSerializer(services.pending_invitations(_session_user(request)), many=True).data)


class AnswerInvitationView(APIView):
    answer: str = "accept"
    error_reasons = {"post": TOKEN_REFUSED}

    @extend_schema(summary="Accept or decline one of your invitations (signed-in session)", request=None,
                   responses=MyInvitationSerializer)
    def post(self, request, pk: int):
        invitation = services.respond_to_invitation(pk, _session_user(request), accept=self.answer == "accept")
        return Response(MyInvitationSerializer(invitation).data)


@extend_schema_view(
    list=extend_schema(summary="API tokens of the current tenant (yours; all of them for owners and admins "
                               "with the tenant:admin scope)"),
    retrieve=extend_schema(summary="One API token (never its secret)"),
    destroy=extend_schema(summary="Revoke an API token"),
)
class ApiTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet
):
    model = ApiToken
    serializer_class = ApiTokenSerializer
    error_reasons = {"create": {400: "bad input, an expires_at not in the future, or a token without tenant:admin"}}
    write_roles = {"owner", "admin", "member", "viewer"}  # anyone may hold a token; scopes are capped by role

    def scope_queryset(self, queryset):
        # Other people's tokens (list, revoke) need a managing role and, for a token, the tenant:admin scope.
        queryset = queryset.select_related("user")
        managing = self.tenant_context.role in MANAGING_ROLES or self.request.user.is_staff
        if managing and "tenant:admin" in self.tenant_context.scopes:
            return queryset
        return queryset.filter(user=self.request.user)

    @extend_schema(
        summary="Create an API token; the secret is in this response only",
        request=ApiTokenSerializer,
        responses={201: ApiTokenCreatedSerializer},
        examples=[TOKEN_EXAMPLE],
    )
    def create(self, request):
        if self.token is not None and "tenant:admin" not in self.tenant_context.scopes:
            raise BadRequest("creating tokens with a token needs the 'tenant:admin' scope")
        serializer = ApiTokenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        d = serializer.validated_data
        token, plaintext = tokens.issue_token(request.user, self.tenant, d["name"], d["scopes"], d.get("expires_at"),
                                              granted_by=self.token, granter_scopes=self.tenant_context.scopes)
        data = ApiTokenCreatedSerializer(token).data
        data["token"] = plaintext
        return Response(data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    def perform_destroy(self, instance):
        tokens.revoke_token(instance, reason="revoked through the API")

    @extend_schema(summary="Revoke an API token", request=None, responses=ApiTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = self.get_object()
        tokens.revoke_token(token, reason="revoked through the API")
        return Response(ApiTokenSerializer(token).data)


class QuotaView(TenantAPIView):
    read_scope = "billing:read"

    @extend_schema(
        summary="Quota status of the current tenant: limit, used and remaining per quota key",
        responses=QuotaStateSerializer(many=True),
        examples=[OpenApiExample("Key bits today", response_only=True, value=[{
            "quota_key": "qkd_key_bits.day", "meter": "qkd_key_bits", "window": "day", "unit": "bit",
            "limit": 10000000, "used": 2560, "remaining": 9997440, "reset_at": "2026-11-24T00:00:00Z"}])],
    )
    def get(self, request):
        states = quota.quota_states(self.tenant)
        data = [
            {"quota_key": s.quota_key, "meter": s.meter, "window": s.window.value, "unit": s.unit,
             "limit": s.limit, "used": s.used, "remaining": s.remaining, "reset_at": s.reset_at}
            for s in states
        ]
        return Response(QuotaStateSerializer(data, many=True).data, headers=quota.ratelimit_headers(states))


USAGE_FILTERS = [
    OpenApiParameter("meter", OpenApiTypes.STR, enum=sorted(METERS), description="only this meter"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="records at or after this time (ISO 8601)"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="records before this time (ISO 8601)"),
]


class UsageRecordViewSet(mixins.ListModelMixin, TenantScopedViewSet):
    """The tenant's usage ledger (append-only)."""

    model = UsageRecord
    serializer_class = UsageRecordSerializer
    read_scope = "billing:read"

    def scope_queryset(self, queryset):
        params = self.request.query_params
        meter = params.get("meter")
        if meter is not None:  # present but empty is not "any meter": the schema's enum has no ""
            if meter not in METERS:
                raise BadRequest(f"unknown meter {meter!r}", details={"meters": sorted(METERS)})
            queryset = queryset.filter(meter=meter)
        for name, lookup in (("since", "created_at__gte"), ("until", "created_at__lt")):
            if name in params:
                try:
                    when = parse_datetime(params[name])
                except ValueError:  # well-formed but impossible, e.g. month 13
                    when = None
                if when is None or timezone.is_naive(when):  # RFC 3339, as the schema's date-time: with an offset
                    raise BadRequest(f"{name} must be an ISO 8601 date-time with a time zone, e.g. "
                                     "2026-11-01T00:00:00Z")
                queryset = queryset.filter(**{lookup: when})
        return queryset

    @extend_schema(summary="Usage ledger of the current tenant", parameters=USAGE_FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="Usage ledger as CSV (same filters)", parameters=USAGE_FILTERS,
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    @action(detail=False, methods=["get"])
    def export(self, request):
        rows = self.get_queryset().order_by("created_at", "id")
        fields = ["created_at", "meter", "kind", "quantity", "unit", "reference", "idempotency_key"]

        class Echo:
            def write(self, value):
                return value

        writer = csv.writer(Echo())

        def lines() -> Iterator[str]:
            yield writer.writerow(fields)
            for r in rows.iterator(chunk_size=2000):
                yield writer.writerow([r.created_at.isoformat(), r.meter, r.kind, r.quantity, r.unit,
                                       r.reference, r.idempotency_key])

        response = StreamingHttpResponse(lines(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="usage-{self.tenant.slug}.csv"'
        return response



AUDIT_FILTERS = [
    OpenApiParameter("actor", OpenApiTypes.STR, description="actor contains this (username or token prefix)"),
    OpenApiParameter("action", OpenApiTypes.STR,
                     description="this action (e.g. tenant.suspended), or every action starting with it when it "
                                 "ends with a dot (e.g. token.)"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="events at or after this time (ISO 8601)"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="events before this time (ISO 8601)"),
]
OPERATOR_AUDIT_FILTERS = [OpenApiParameter("tenant", OpenApiTypes.STR, description="only this tenant (slug)"),
                          *AUDIT_FILTERS]


def _audit_csv(events, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(audit.csv_lines(events.iterator(chunk_size=2000)), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class AuditEventViewSet(mixins.ListModelMixin, TenantScopedViewSet):
    """The current tenant's audit log: who did what in it, and when (owners and admins)."""

    model = AuditEvent
    serializer_class = AuditEventSerializer
    read_scope = "tenant:admin"

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if self.tenant_context.role not in MANAGING_ROLES and not request.user.is_staff:
            raise Forbidden("the audit log is for the tenant's owners and admins")

    def scope_queryset(self, queryset):
        return audit.filtered(self.request.query_params, tenant=self.tenant)

    @extend_schema(summary="Audit log of the current tenant (newest first)", parameters=AUDIT_FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Audit log of the current tenant as CSV (same filters, oldest first)",
                   parameters=AUDIT_FILTERS, responses={(200, "text/csv"): OpenApiTypes.STR})
    @action(detail=False, methods=["get"])
    def export(self, request):
        return _audit_csv(self.get_queryset().order_by("created_at", "id"), f"audit-{self.tenant.slug}.csv")


class OperatorAuditViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Every tenant's audit log and the events outside any tenant (plans, the network, sign-ins): operators."""

    serializer_class = AuditEventSerializer
    permission_classes = [permissions.IsAuthenticated, IsOperator]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.unscoped().none()
        return audit.filtered(self.request.query_params)

    @extend_schema(summary="Audit log of every tenant (operators; newest first)", parameters=OPERATOR_AUDIT_FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Audit log as CSV (operators; same filters, oldest first)",
                   parameters=OPERATOR_AUDIT_FILTERS, responses={(200, "text/csv"): OpenApiTypes.STR})
    @action(detail=False, methods=["get"])
    def export(self, request):
        return _audit_csv(self.get_queryset().order_by("created_at", "id"), "audit.csv")
