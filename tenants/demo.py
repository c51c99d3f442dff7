"""Default plans and the demo operator/tenant that ``make run`` creates on a fresh machine."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from django.conf import settings
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
    operator_totp: bool = False  # the operator's TOTP is the demo's pre-enrolled one (``demo_totp`` prints codes)


# -- the demo operator's second factor ---------------------------------------------------------------------------
DEMO_TOTP_MARK = "qxaas_demo"  # in the authenticator's data: this one was enrolled by the demo, not by a person


class DemoRefused(Exception):
    """A demo-only shortcut was asked for outside the demo."""


def demo_refusal() -> str | None:
    """Why demo-only shortcuts (a pre-enrolled TOTP whose codes a command prints) are refused here, or None.
    They need ``QXAAS_DEMO`` set (``make run`` sets it) and never run under the production settings."""
    if getattr(settings, "QXAAS_PRODUCTION", False) or os.environ.get("DJANGO_SETTINGS_MODULE", "").endswith(
            ".production"):
        return "refused under the production settings: operators enrol their own TOTP there"
    if not os.environ.get("QXAAS_DEMO"):
        return "refused outside the demo: QXAAS_DEMO is not set (make run sets it)"
    return None


def enrol_demo_totp(user) -> bool:
    """Give the demo operator a TOTP authenticator with a fresh random secret, marked as the demo's, unless they
    have one already. Returns True when the user's TOTP is the demo's (so ``demo_totp_code`` can print it)."""
    from allauth.mfa.models import Authenticator
    from allauth.mfa.totp.internal.auth import generate_totp_secret
    from allauth.mfa.utils import encrypt

    why = demo_refusal()
    if why:
        raise DemoRefused(why)
    existing = Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).first()
    if existing is not None:
        return bool(existing.data.get(DEMO_TOTP_MARK))
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP,
                                 data={"secret": encrypt(generate_totp_secret()), DEMO_TOTP_MARK: True})
    return True


def demo_totp_code(username: str = "operator") -> tuple[str, int]:
    """The current TOTP code of the demo operator and the seconds it stays current. Only for an authenticator
    the demo enrolled itself (a person's own TOTP is never printed), and only in the demo."""
    import time

    from allauth.mfa import app_settings
    from allauth.mfa.models import Authenticator
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
    from allauth.mfa.utils import decrypt

    why = demo_refusal()
    if why:
        raise DemoRefused(why)
    found = Authenticator.objects.filter(user__username=username, type=Authenticator.Type.TOTP).first()
    if found is None or not found.data.get(DEMO_TOTP_MARK):
        raise DemoRefused(f"{username} has no TOTP enrolled by the demo (run manage.py bootstrap_demo with "
                          "QXAAS_DEMO=1, or use your authenticator app)")
    now = int(time.time())
    period = app_settings.TOTP_PERIOD
    return format_hotp_value(hotp_value(decrypt(found.data["secret"]), now // period)), period - now % period


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
    operator, op_pw = _ensure_user("operator", "operator@qxaas.localhost", staff=True)
    operator_totp = demo_refusal() is None and enrol_demo_totp(operator)
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
    return DemoCredentials("operator", op_pw, "researcher", r_pw, tenant.slug, token, operator_totp)
