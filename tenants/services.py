"""Tenants, plans and memberships: the operations the API, the web shell and the admin share."""

from __future__ import annotations

from django.db import transaction

from portal.errors import Conflict, Forbidden

from . import audit
from .models import Membership, Plan, PlanQuota, Role, Tenant, TenantQuotaOverride
from .tokens import narrow_tokens


@transaction.atomic
def set_plan_limits(plan: Plan, limits: dict[str, int]) -> None:
    """Replace the plan's limits with ``limits`` (quota keys not listed become 0)."""
    before = {q.quota_key: q.limit for q in plan.quotas.all()}
    plan.quotas.all().delete()
    PlanQuota.objects.bulk_create(PlanQuota(plan=plan, quota_key=k, limit=v) for k, v in limits.items())
    if before != dict(limits):
        audit.record("plan.limits_changed", obj=plan, details={"before": before, "after": dict(limits)})


@transaction.atomic
def create_plan(name: str, slug: str, limits: dict[str, int], description: str = "") -> Plan:
    if Plan.objects.filter(slug=slug).exists():
        raise Conflict(f"a plan with slug {slug!r} already exists")
    plan = Plan.objects.create(name=name, slug=slug, description=description)
    audit.record("plan.created", obj=plan, details={"name": name})
    set_plan_limits(plan, limits)
    return plan


@transaction.atomic
def set_quota_overrides(tenant: Tenant, overrides: dict[str, int]) -> None:
    """Replace the tenant's per-quota overrides."""
    before = quota_overrides(tenant)
    TenantQuotaOverride.objects.for_tenant(tenant).delete()
    TenantQuotaOverride.objects.bulk_create(
        TenantQuotaOverride(tenant=tenant, quota_key=k, limit=v) for k, v in overrides.items()
    )
    if before != dict(overrides):
        audit.record("tenant.quota_overrides_changed", tenant=tenant, obj=tenant,
                     details={"before": before, "after": dict(overrides)})


def quota_overrides(tenant: Tenant) -> dict[str, int]:
    return {o.quota_key: o.limit for o in TenantQuotaOverride.objects.for_tenant(tenant)}


@transaction.atomic
def create_tenant(name: str, slug: str, plan: Plan, owner=None) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict(f"a tenant with slug {slug!r} already exists")
    tenant = Tenant.objects.create(name=name, slug=slug, plan=plan)
    if owner is not None:
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    audit.record("tenant.created", tenant=tenant, obj=tenant,
                 details={"name": name, "plan": plan.slug, "owner": owner.get_username() if owner else None})
    return tenant


@transaction.atomic
def update_tenant(tenant: Tenant, *, name: str | None = None, plan: Plan | None = None,
                  slug: str | None = None) -> Tenant:
    """Rename a tenant or move it to another plan (its quotas follow the new plan at once)."""
    changes: dict[str, dict[str, str]] = {}
    if slug is not None and slug != tenant.slug:
        if Tenant.objects.filter(slug=slug).exclude(pk=tenant.pk).exists():
            raise Conflict(f"a tenant with slug {slug!r} already exists")
        changes["slug"] = {"before": tenant.slug, "after": slug}
        tenant.slug = slug
    if name is not None and name != tenant.name:
        changes["name"] = {"before": tenant.name, "after": name}
        tenant.name = name
    if plan is not None and plan.pk != tenant.plan_id:
        changes["plan"] = {"before": tenant.plan.slug, "after": plan.slug}
        tenant.plan = plan
    if changes:
        tenant.save(update_fields=["name", "plan", "slug"])
        if "slug" in changes:
            audit.record("tenant.renamed", tenant=tenant, obj=tenant, details=changes["slug"])
        if "plan" in changes:
            audit.record("tenant.plan_changed", tenant=tenant, obj=tenant, details=changes["plan"])
        if "name" in changes:
            audit.record("tenant.renamed", tenant=tenant, obj=tenant, details=changes["name"])
    return tenant


STATUS_ACTIONS = {Tenant.Status.SUSPENDED: "tenant.suspended", Tenant.Status.ACTIVE: "tenant.resumed"}


def set_status(tenant: Tenant, status: str) -> Tenant:
    """Suspend or resume a tenant. Takes effect on the next request: every token and SAE certificate is checked
    against the tenant's status row on each request (``tenants.tenancy.resolve_tenant``, the key gateway too)."""
    if status not in STATUS_ACTIONS:
        raise ValueError(f"unknown tenant status {status!r}")
    previous = Tenant.objects.filter(pk=tenant.pk).values_list("status", flat=True).first()
    tenant.status = status
    tenant.save(update_fields=["status"])
    if previous != status:
        audit.record(STATUS_ACTIONS[status], tenant=tenant, obj=tenant, details={"before": previous})
    return tenant


def _owners(tenant: Tenant) -> int:
    return Membership.objects.for_tenant(tenant).filter(role=Role.OWNER).count()


def add_member(tenant: Tenant, user, role: str, acting_role: str | None) -> Membership:
    if role == Role.OWNER and acting_role not in (Role.OWNER, None):
        raise Forbidden("only an owner can make someone an owner")
    if Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise Conflict(f"{user.username} is already a member of {tenant.slug}")
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    audit.record("member.added", tenant=tenant, obj=membership, details={"user": user.username, "role": role})
    return membership


@transaction.atomic
def change_role(membership: Membership, role: str, acting_role: str | None) -> Membership:
    if Role.OWNER in (role, membership.role) and acting_role not in (Role.OWNER, None):
        raise Forbidden("only an owner can grant or take away the owner role")
    if membership.role == Role.OWNER and role != Role.OWNER and _owners(membership.tenant) <= 1:
        raise Conflict("a tenant keeps at least one owner")
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    narrow_tokens(membership.tenant, membership.user, role)  # a demotion also cuts down the member's tokens
    if before != role:
        audit.record("member.role_changed", tenant=membership.tenant, obj=membership,
                     details={"user": membership.user.username, "before": before, "after": role})
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
    audit.record("member.removed", tenant=membership.tenant, obj=membership,
                 details={"user": membership.user.username, "role": membership.role})
