"""Base API views: tenancy, scopes and roles decided once, for every endpoint.

Tenant endpoints subclass ``TenantScopedViewSet`` / ``TenantAPIView``: the tenant is resolved before the
view runs (``self.tenant``), the queryset is always ``model.objects.for_tenant(self.tenant)`` and a
subclass can only narrow it (``scope_queryset``). Operator endpoints subclass ``OperatorViewSet``.
"""

from __future__ import annotations

from typing import ClassVar

from django.db.models import QuerySet
from rest_framework import permissions, viewsets
from rest_framework.views import APIView

from portal.errors import Forbidden
from tenants.models import WRITING_ROLES, ApiToken, Tenant
from tenants.tenancy import TenantContext, resolve_tenant

SAFE = permissions.SAFE_METHODS


class TenantContextMixin:
    """Resolves the request's tenant in ``initial`` and checks the scope and role the view asks for.

    ``read_scope`` / ``write_scope``: the token scope needed for safe / unsafe methods.
    ``write_roles``: membership roles allowed to use unsafe methods (default owner, admin, member).
    """

    read_scope: ClassVar[str | None] = None
    write_scope: ClassVar[str | None] = None
    write_roles: ClassVar[set[str]] = set(WRITING_ROLES)
    tenant_context: TenantContext

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles
        self.tenant_context = resolve_tenant(request)
        safe = request.method in SAFE
        needed = self.read_scope if safe else self.write_scope
        if needed and needed not in self.tenant_context.scopes:
            raise Forbidden(f"this needs the {needed!r} scope", details={"required_scope": needed})
        if not safe and self.tenant_context.role not in self.write_roles and not request.user.is_staff:
            raise Forbidden(f"your role ({self.tenant_context.role}) cannot change this")

    @property
    def tenant(self) -> Tenant:
        return self.tenant_context.tenant

    @property
    def token(self) -> ApiToken | None:
        return self.tenant_context.token


class TenantAPIView(TenantContextMixin, APIView):
    """A non-model endpoint that acts within the request's tenant."""


class TenantScopedViewSet(TenantContextMixin, viewsets.GenericViewSet):
    """A model endpoint whose rows always belong to the request's tenant. Set ``model``."""

    model: ClassVar[type]

    def get_queryset(self) -> QuerySet:
        # Not meant to be overridden: narrow with scope_queryset instead.
        if getattr(self, "swagger_fake_view", False):  # OpenAPI generation has no tenant
            return self.model.objects.unscoped().none()
        return self.scope_queryset(self.model.objects.for_tenant(self.tenant))

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        return queryset

    def perform_create(self, serializer) -> None:
        serializer.save(tenant=self.tenant)


class IsOperator(permissions.BasePermission):
    """Staff users; through a token only with the ``operator`` scope."""

    message = "operators only"

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        token = request.auth if isinstance(request.auth, ApiToken) else None
        return token is None or "operator" in token.scopes


class OperatorViewSet(viewsets.ModelViewSet):
    permission_classes = [permissions.IsAuthenticated, IsOperator]
