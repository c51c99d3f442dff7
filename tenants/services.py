"""Tenants, plans and memberships: the operations the API, the web shell and the admin share."""

from __future__ import annotations

from django.db import transaction

from portal.errors import Conflict, Forbidden

from .models import Membership, Plan, PlanQuota, Role, Tenant, TenantQuotaOverride
from .tokens import narrow_tokens


@transaction.atomic
def set_plan_limits(plan: Plan, limits: dict[str, int]) -> None:
    """Replace the plan's limits with ``limits`` (quota keys not listed become 0)."""
    plan.quotas.all().delete()
    PlanQuota.objects.bulk_create(PlanQuota(plan=plan, quota_key=k, limit=v) for k, v in limits.items())


@transaction.atomic
def set_quota_overrides(tenant: Tenant, overrides: dict[str, int]) -> None:
    """Replace the tenant's per-quota overrides."""
    TenantQuotaOverride.objects.for_tenant(tenant).delete()
    TenantQuotaOverride.objects.bulk_create(
        TenantQuotaOverride(tenant=tenant, quota_key=k, limit=v) for k, v in overrides.items()
    )


def quota_overrides(tenant: Tenant) -> dict[str, int]:
    return {o.quota_key: o.limit for o in TenantQuotaOverride.objects.for_tenant(tenant)}


@transaction.atomic
def create_tenant(name: str, slug: str, plan: Plan, owner=None) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict(f"a tenant with slug {slug!r} already exists")
    tenant = Tenant.objects.create(name=name, slug=slug, plan=plan)
    if owner is not None:
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    return tenant


def set_status(tenant: Tenant, status: str) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status"])
    return tenant


def _owners(tenant: Tenant) -> int:
    return Membership.objects.for_tenant(tenant).filter(role=Role.OWNER).count()


def add_member(tenant: Tenant, user, role: str, acting_role: str | None) -> Membership:
    if role == Role.OWNER and acting_role not in (Role.OWNER, None):
        raise Forbidden("only an owner can make someone an owner")
    if Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise Conflict(f"{user.username} is already a member of {tenant.slug}")
    return Membership.objects.create(tenant=tenant, user=user, role=role)


@transaction.atomic
def change_role(membership: Membership, role: str, acting_role: str | None) -> Membership:
    if Role.OWNER in (role, membership.role) and acting_role not in (Role.OWNER, None):
        raise Forbidden("only an owner can grant or take away the owner role")
    if membership.role == Role.OWNER and role != Role.OWNER and _owners(membership.tenant) <= 1:
        raise Conflict("a tenant keeps at least one owner")
    membership.role = role
    membership.save(update_fields=["role"])
    narrow_tokens(membership.tenant, membership.user, role)  # a demotion also cuts down the member's tokens
    return membership


@transaction.atomic
def remove_member(membership: Membership, acting_role: str | None) -> None:
    if membership.role == Role.OWNER:
        if acting_role not in (Role.OWNER, None):
            raise Forbidden("only an owner can remove an owner")
        if _owners(membership.tenant) <= 1:
            raise Conflict("a tenant keeps at least one owner")
    Membership.objects.for_tenant(membership.tenant_id).filter(pk=membership.pk).delete()
    narrow_tokens(membership.tenant, membership.user, None)  # their tokens there are revoked (staff keep theirs)
