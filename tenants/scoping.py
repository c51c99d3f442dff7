"""Tenant scoping that fails closed.

Every model that belongs to a tenant uses ``TenantScopedManager``. Its querysets refuse to run until they
are scoped, either to one tenant (``.for_tenant(t)``) or, deliberately and visibly, to all tenants
(``.unscoped()``, for operators, admin and periodic jobs). A view or service that forgets the tenant
raises ``UnscopedQueryError`` instead of leaking another tenant's rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models

if TYPE_CHECKING:
    from .models import Tenant


class UnscopedQueryError(RuntimeError):
    """A tenant-owned table was queried without choosing a tenant."""


class TenantScopedQuerySet(models.QuerySet):
    _scope: str | None = None

    def for_tenant(self, tenant: Tenant | int) -> TenantScopedQuerySet:
        tenant_id = tenant if isinstance(tenant, int) else tenant.pk
        if tenant_id is None:
            raise UnscopedQueryError("cannot scope a query to an unsaved tenant")
        qs = self.filter(tenant_id=tenant_id)
        qs._scope = f"tenant:{tenant_id}"
        return qs

    def unscoped(self) -> TenantScopedQuerySet:
        qs = self._chain()
        qs._scope = "all"
        return qs

    def _clone(self) -> TenantScopedQuerySet:
        clone = super()._clone()
        clone._scope = self._scope
        return clone

    def _require_scope(self) -> None:
        if self._scope is None:
            raise UnscopedQueryError(
                f"{self.model.__name__} is tenant-owned: call .for_tenant(tenant) or .unscoped() first"
            )

    # Every path that reads or writes rows goes through one of these.
    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._require_scope()
        super()._fetch_all()

    def iterator(self, *args: Any, **kwargs: Any):
        self._require_scope()
        return super().iterator(*args, **kwargs)

    def count(self) -> int:
        self._require_scope()
        return super().count()

    def exists(self) -> bool:
        self._require_scope()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict:
        self._require_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._require_scope()
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._require_scope()
        return super().delete()


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):  # type: ignore[misc]
    pass
