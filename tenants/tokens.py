"""API tokens: ``qx_<key>.<secret>``, shown once, stored as HMAC-SHA256(pepper, secret)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from portal.errors import BadRequest, Forbidden

from . import audit
from .models import MANAGING_ROLES, ApiToken, Membership, Role, Scope, Tenant

TOKEN_RE = re.compile(r"^qx_(?P<key>[0-9a-f]{12})\.(?P<secret>[A-Za-z0-9_-]{43})$")
LAST_USED_RESOLUTION = timedelta(minutes=1)

READ_SCOPES = {Scope.KEYS_READ, Scope.TUNNELS_READ, Scope.TLS_READ, Scope.BILLING_READ}
ROLE_SCOPES: dict[str, set[str]] = {
    Role.OWNER: {s.value for s in Scope} - {Scope.OPERATOR},
    Role.ADMIN: {s.value for s in Scope} - {Scope.OPERATOR},
    Role.MEMBER: {s.value for s in Scope} - {Scope.OPERATOR, Scope.TENANT_ADMIN},
    Role.VIEWER: {Scope.TUNNELS_READ.value, Scope.TLS_READ.value, Scope.BILLING_READ.value},
}



def has_totp(user) -> bool:
    """Whether ``user`` has enrolled a TOTP authenticator (allauth MFA): staff grant ``operator`` only then."""
    from allauth.mfa.models import Authenticator

    return Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()

class InvalidToken(Exception):
    """The presented token is malformed, unknown, revoked or expired (the caller gets one generic 401)."""


def current_pepper_id() -> int:
    return max(settings.API_TOKEN_PEPPERS)


def hash_secret(secret: str, pepper_id: int) -> str:
    pepper = settings.API_TOKEN_PEPPERS[pepper_id].encode()
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def allowed_scopes(user, tenant: Tenant) -> set[str]:
    """Scopes a user may put on a token for ``tenant``: those of the role, plus ``operator`` for staff who
    enrolled TOTP (a stolen staff password alone must not mint an operator token)."""
    membership = Membership.objects.for_tenant(tenant).filter(user=user).first()
    scopes = set(role_scopes(membership.role if membership else None, user.is_staff))
    if user.is_staff and not has_totp(user):
        scopes.discard(Scope.OPERATOR.value)
    return scopes


def role_scopes(role: str | None, is_staff: bool) -> frozenset[str]:
    """The most a token of a user with ``role`` in a tenant (None: not a member) can do there. Staff keep the
    owner's scopes and ``operator`` (which only staff with TOTP can put on a token in the first place)."""
    scopes = set(ROLE_SCOPES[role]) if role else set()
    if is_staff:
        scopes |= ROLE_SCOPES[Role.OWNER] | {Scope.OPERATOR.value}
    return frozenset(scopes)


def effective_scopes(token: ApiToken, role: str | None, is_staff: bool) -> frozenset[str]:
    """What ``token`` may do now: its scopes within its user's current role (a demotion takes effect at once,
    without touching the token; ``narrow_tokens`` also rewrites the stored list)."""
    return frozenset(token.scopes) & role_scopes(role, is_staff)


def narrow_tokens(tenant: Tenant, user, role: str | None) -> tuple[int, int]:
    """After ``user``'s role in ``tenant`` changed to ``role`` (None: removed), cut their live tokens there down
    to the role's scopes; a token left with none is revoked. Returns (narrowed, revoked)."""
    allowed = role_scopes(role, user.is_staff)
    narrowed = revoked = 0
    now = timezone.now()
    live = ApiToken.objects.for_tenant(tenant).filter(user=user, revoked_at__isnull=True)
    for token in live.select_for_update():
        kept = sorted(set(token.scopes) & allowed)
        if not kept:
            live.filter(pk=token.pk).update(revoked_at=now)
            revoked += 1
            audit.record("token.revoked", tenant=tenant, obj=token, object_id=token.prefix,
                         details={"name": token.name, "reason": "role no longer allows any of its scopes"})
        elif kept != sorted(token.scopes):
            live.filter(pk=token.pk).update(scopes=kept)
            narrowed += 1
    return narrowed, revoked


def issue_token(
    user, tenant: Tenant, name: str, scopes: list[str], expires_at: datetime | None = None,
    *, granted_by: ApiToken | None = None, granter_scopes: frozenset[str] | set[str] | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its plaintext, which is never stored and cannot be shown again.

    ``granted_by``: the token the request that asks for this one was authenticated with (None for a signed-in
    session). A token can only hand on scopes it holds itself (``granter_scopes``: its effective scopes, by
    default its own list), and never ``operator``: operator tokens come from a session with TOTP.
    """
    unknown = sorted(set(scopes) - {s.value for s in Scope})
    if unknown:
        raise BadRequest(f"unknown scopes: {', '.join(unknown)}", details={"scopes": [s.value for s in Scope]})
    if not scopes:
        raise BadRequest("a token needs at least one scope")
    denied = sorted(set(scopes) - allowed_scopes(user, tenant))
    if denied:
        raise Forbidden(f"your role in {tenant.slug!r} cannot grant: {', '.join(denied)}")
    if granted_by is not None:
        if Scope.OPERATOR in scopes:
            raise Forbidden("a token cannot create operator tokens; sign in (with TOTP) to create one")
        held = set(granter_scopes if granter_scopes is not None else granted_by.scopes)
        beyond = sorted(set(scopes) - held)
        if beyond:
            raise Forbidden(f"a token can only grant scopes it holds itself; this one lacks: {', '.join(beyond)}",
                            details={"not_held": beyond})
    if expires_at is not None and expires_at <= timezone.now():
        raise BadRequest("expires_at must be in the future")
    key = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    pepper_id = current_pepper_id()
    token = ApiToken.objects.create(
        key=key, secret_hash=hash_secret(secret, pepper_id), pepper_id=pepper_id, tenant=tenant, user=user,
        name=name, scopes=sorted(set(scopes)), expires_at=expires_at,
    )
    audit.record("token.created", tenant=tenant, obj=token, object_id=token.prefix,
                 details={"name": name, "scopes": token.scopes, "user": user.get_username(),
                          "expires_at": expires_at.isoformat() if expires_at else None,
                          "granted_by": granted_by.prefix if granted_by else None})
    return token, f"qx_{key}.{secret}"


def verify_token(raw: str) -> ApiToken:
    """The usable token for ``raw``; raises ``InvalidToken`` otherwise. Updates ``last_used_at`` at most
    once a minute so a busy client does not turn every request into a write."""
    match = TOKEN_RE.match(raw.strip())
    if not match:
        raise InvalidToken("malformed token")
    # The token itself names its tenant: looking it up across tenants is what authentication is.
    token = ApiToken.objects.unscoped().select_related("tenant", "tenant__plan", "user").filter(
        key=match["key"]
    ).first()
    if token is None or token.pepper_id not in settings.API_TOKEN_PEPPERS:
        raise InvalidToken("unknown token")
    if not hmac.compare_digest(token.secret_hash, hash_secret(match["secret"], token.pepper_id)):
        raise InvalidToken("unknown token")
    if token.revoked_at is not None:
        raise InvalidToken("token revoked")
    now = timezone.now()
    if token.is_expired(now):
        raise InvalidToken("token expired")
    if not token.user.is_active:
        raise InvalidToken("user inactive")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.unscoped().filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def can_manage_token(user, token: ApiToken, role: str | None) -> bool:
    return token.user_id == user.pk or role in MANAGING_ROLES or user.is_staff


def revoke_token(token: ApiToken, reason: str = "") -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        if ApiToken.objects.for_tenant(token.tenant_id).filter(pk=token.pk, revoked_at__isnull=True).update(
                revoked_at=token.revoked_at):
            audit.record("token.revoked", tenant=token.tenant_id, obj=token, object_id=token.prefix,
                         details={"name": token.name, "reason": reason})




def expire_tokens(now: datetime | None = None) -> int:
    """Mark expired tokens revoked so listings and audits show them as dead; returns how many."""
    now = now or timezone.now()
    due = ApiToken.objects.unscoped().filter(expires_at__lte=now, revoked_at__isnull=True)
    expired = 0
    for token in due.only("pk", "key", "name", "tenant_id"):
        if ApiToken.objects.unscoped().filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
            expired += 1
            audit.record("token.revoked", tenant=token.tenant_id, obj=token, object_id=token.prefix,
                         details={"name": token.name, "reason": "expired"})
    return expired
