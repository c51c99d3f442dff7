"""Tenants, plans and memberships: the operations the API, the web shell and the admin share."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from portal.errors import BadRequest, Conflict, Forbidden, NotFound

from . import audit
from .models import Invitation, Membership, Plan, PlanQuota, Role, Tenant, TenantQuotaOverride
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


def invite(tenant: Tenant, handle: str, role: str, invited_by, acting_role: str | None) -> Invitation:
    """Invite the user with username or email ``handle`` to ``tenant``; they become a member when they accept.

    The answer does not depend on whether such a user exists (no account or email enumeration)."""
    handle = (handle or "").strip()
    if not handle:
        raise BadRequest("give the username or the email of the user to invite")
    if role not in Role.values:
        raise BadRequest(f"unknown role {role!r}", details={"roles": list(Role.values)})
    if role == Role.OWNER and acting_role not in (Role.OWNER, None):
        raise Forbidden("only an owner can make someone an owner")
    pending = Invitation.objects.for_tenant(tenant).filter(invitee__iexact=handle, status=Invitation.Status.PENDING,
                                                           expires_at__gt=timezone.now())
    if pending.exists():
        raise Conflict(f"{handle!r} already has a pending invitation to {tenant.slug}")
    users = get_user_model().objects.filter(is_active=True)
    user = (users.filter(email__iexact=handle) if "@" in handle else users.filter(username=handle)).first()
    if user is not None and Membership.objects.for_tenant(tenant).filter(user=user).exists():
        user = None  # already a member: nothing to accept (and no different answer to tell it)
    invitation = Invitation.objects.create(tenant=tenant, invitee=handle, user=user, role=role, invited_by=invited_by)
    audit.record("member.invited", tenant=tenant, obj=invitation, details={"role": role})  # no handle: may be an email
    return invitation


def pending_invitations(user):
    """The invitations ``user`` can still accept, across tenants (the invitee is not a member yet)."""
    return Invitation.objects.unscoped().select_related("tenant", "invited_by").filter(
        user=user, status=Invitation.Status.PENDING, expires_at__gt=timezone.now()
    )


@transaction.atomic
def respond_to_invitation(invitation_id: int, user, accept: bool) -> Invitation:
    """Accept (join the tenant with the invited role) or decline one of ``user``'s pending invitations."""
    invitation = pending_invitations(user).select_for_update(of=("self",)).filter(pk=invitation_id).first()
    if invitation is None:
        raise NotFound("no pending invitation with that id for you")
    if accept:
        Membership.objects.for_tenant(invitation.tenant).get_or_create(
            tenant=invitation.tenant, user=user, defaults={"role": invitation.role}
        )
    invitation.status = Invitation.Status.ACCEPTED if accept else Invitation.Status.DECLINED
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at"])
    audit.record("member.added" if accept else "member.declined", tenant=invitation.tenant, obj=invitation,
                 details={"user": user.username, "role": invitation.role}, user=user)
    return invitation


def revoke_invitation(invitation: Invitation) -> None:
    revoked = Invitation.objects.for_tenant(invitation.tenant_id).filter(
        pk=invitation.pk, status=Invitation.Status.PENDING
    ).update(status=Invitation.Status.REVOKED, responded_at=timezone.now())
    if revoked:
        audit.record("member.invitation_revoked", tenant=invitation.tenant_id, obj=invitation)


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
