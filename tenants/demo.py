"""Default plans and the demo operator/tenant that ``make run`` creates on a fresh machine."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction

from .models import ApiToken, Membership, Plan, Role, Scope, Tenant
from .services import set_plan_limits
from .tokens import issue_token, revoke_token

MIB = 1 << 20
DEFAULT_PLANS: dict[str, tuple[str, dict[str, int]]] = {
    "research": ("Research", {
        "qkd_key_bits.day": 10_000_000, "qkd_key_bits.month": 200_000_000,
        "entropy_bytes.day": 256 * MIB, "entropy_bytes.month": 4096 * MIB,
        "ipsec_tunnels": 2, "tls_sessions": 10, "key_streams": 4,
    }),
    "production": ("Production", {
        "qkd_key_bits.day": 1_000_000_000, "qkd_key_bits.month": 20_000_000_000,
        "entropy_bytes.day": 16384 * MIB, "entropy_bytes.month": 262144 * MIB,
        "ipsec_tunnels": 50, "tls_sessions": 500, "key_streams": 100,
    }),
    "unlimited": ("Unlimited (operators)", {
        "qkd_key_bits.day": -1, "qkd_key_bits.month": -1, "entropy_bytes.day": -1, "entropy_bytes.month": -1,
        "ipsec_tunnels": -1, "tls_sessions": -1, "key_streams": -1,
    }),
}


@dataclass
class DemoCredentials:
    operator: str
    operator_password: str | None  # None when the user existed already (password unchanged)
    researcher: str
    researcher_password: str | None
    tenant: str
    token: str


def ensure_default_plans() -> None:
    for slug, (name, limits) in DEFAULT_PLANS.items():
        plan, created = Plan.objects.get_or_create(slug=slug, defaults={"name": name})
        if created:
            set_plan_limits(plan, limits)


def _ensure_user(username: str, email: str, staff: bool) -> tuple[object, str | None]:
    users = get_user_model().objects
    user = users.filter(username=username).first()
    if user is not None:
        return user, None
    password = secrets.token_urlsafe(12)
    user = users.create_user(username, email, password, is_staff=staff, is_superuser=staff)
    # The demo accounts' emails count as verified so they can sign in at once.
    from allauth.account.models import EmailAddress

    EmailAddress.objects.create(user=user, email=email, primary=True, verified=True)
    return user, password


@transaction.atomic
def bootstrap_demo() -> DemoCredentials:
    ensure_default_plans()
    _operator, op_pw = _ensure_user("operator", "operator@qxaas.localhost", staff=True)
    researcher, r_pw = _ensure_user("researcher", "researcher@qxaas.localhost", staff=False)
    tenant = Tenant.objects.filter(slug="demo-lab").first() or Tenant.objects.create(
        name="Demo lab", slug="demo-lab", plan=Plan.objects.get(slug="research")
    )
    Membership.objects.for_tenant(tenant).get_or_create(tenant=tenant, user=researcher,
                                                        defaults={"role": Role.OWNER})
    # A fresh demo token each run (the old one is revoked): secrets are never stored, so none can be re-shown.
    for old in ApiToken.objects.for_tenant(tenant).filter(name="demo", revoked_at__isnull=True):
        revoke_token(old)
    scopes = [s.value for s in Scope if s != Scope.OPERATOR]
    _, token = issue_token(researcher, tenant, "demo", scopes)
    return DemoCredentials("operator", op_pw, "researcher", r_pw, tenant.slug, token)
