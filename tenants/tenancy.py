"""The one place that decides the tenant of a request."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages

from portal import logs
from portal.errors import ApiError, BadRequest, Forbidden, NotFound

from .models import ApiToken, Membership, Tenant
from .tokens import ROLE_SCOPES, effective_scopes


@dataclass(frozen=True)
class TenantContext:
    tenant: Tenant
    role: str | None  # None for an operator acting on a tenant they are not a member of
    scopes: frozenset[str]  # what this request may do in the tenant
    token: ApiToken | None


def resolve_tenant(request, slug: str | None = None) -> TenantContext:
    """A token (or an SAE certificate) decides its tenant; a browser session names one (``slug``, the
    ``X-Tenant`` header, ``?tenant=``, or the session's current tenant) or has exactly one membership. Suspended
    tenants get 403."""
    user = request.user
    token = request.auth if isinstance(request.auth, ApiToken) else None
    bound = getattr(user, "bound_tenant", None)  # a principal that belongs to one tenant (an SAE certificate)
    if bound is not None:
        tenant, role, scopes = bound, None, frozenset(user.scopes)
    elif token is not None:
        tenant = token.tenant
        membership = Membership.objects.for_tenant(tenant).filter(user=user).first()
        if membership is None and not user.is_staff:
            raise Forbidden("the token's user is no longer a member of its tenant")
        role = membership.role if membership else None
        scopes = effective_scopes(token, role, user.is_staff)  # never more than the role allows today
    else:
        slug = (
            slug
            or request.headers.get("X-Tenant")
            or request.GET.get("tenant")
            or getattr(request, "session", {}).get("tenant")
        )
        memberships = Membership.objects.unscoped().select_related("tenant", "tenant__plan").filter(user=user)
        if slug:
            membership = memberships.filter(tenant__slug=slug).first()
            if membership is not None:
                tenant, role = membership.tenant, membership.role
            elif user.is_staff:
                tenant = Tenant.objects.select_related("plan").filter(slug=slug).first()
                if tenant is None:
                    raise NotFound(f"no tenant {slug!r}")
                role = None
            else:
                raise NotFound(f"no tenant {slug!r}")  # indistinguishable from a tenant that does not exist
        else:
            found = list(memberships[:2])
            if len(found) != 1:
                raise BadRequest("choose a tenant with the X-Tenant header (or ?tenant=<slug>)")
            tenant, role = found[0].tenant, found[0].role
        scopes = frozenset(ROLE_SCOPES[role]) if role else frozenset()
        if user.is_staff:
            scopes |= frozenset(ROLE_SCOPES["owner"]) | {"operator"}
    if not tenant.is_active:
        raise Forbidden(f"tenant {tenant.slug!r} is suspended")
    logs.bind(tenant=tenant.slug)  # the request's log lines name its tenant (LOG_FORMAT=json: a field)
    return TenantContext(tenant=tenant, role=role, scopes=scopes, token=token)


def web_tenant(request) -> TenantContext | None:
    """The tenant a web page shows (``?tenant=`` switches and is remembered in the session); None when the user
    is a member of no tenant. For pages only: a bad ``?tenant=`` is a message, not an error."""
    if request.GET.get("tenant"):
        request.session["tenant"] = request.GET["tenant"]
    request.auth = None
    try:
        return resolve_tenant(request)
    except ApiError as exc:
        if request.GET.get("tenant"):
            messages.error(request, exc.message)
        request.session.pop("tenant", None)
        first = Membership.objects.unscoped().select_related("tenant").filter(user=request.user).first()
        if first is None:
            return None
        request.session["tenant"] = first.tenant.slug
        return resolve_tenant(request, slug=first.tenant.slug)
