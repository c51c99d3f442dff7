"""The audit log: who did what, when, recorded by the service functions themselves.

A service calls ``record(action, tenant=..., obj=..., details=...)`` after it changed something. Who acted is
read from the request being served (``AuditContextMiddleware`` keeps it in a context variable): the API token
of a Bearer request (DRF copies ``request.auth`` onto the Django request), else the signed-in user; outside a
request (a Celery worker, a periodic job, a management command) the actor is the system, named by ``system()``.
So the same service call made from the API, a web page or a worker leaves the same row, with its actor.

``details`` must never carry a secret: keys that look like one (token, secret, password, key material) are
dropped before the row is written, whatever the caller passed.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils.dateparse import parse_datetime

from portal import logs
from portal.errors import BadRequest

from .models import ApiToken, AuditEvent, Tenant

log = logging.getLogger(__name__)
_request: contextvars.ContextVar[Any] = contextvars.ContextVar("qxaas_audit_request", default=None)
_system: contextvars.ContextVar[str | None] = contextvars.ContextVar("qxaas_audit_system", default=None)

# Keys never written into details, at any depth (a token's plaintext, an SAE's private key, a PSK...).
SECRET_WORDS = ("secret", "password", "token", "private", "psk", "key_material", "plaintext", "otp", "totp")
SECRET_KEYS = {"key", "keys", "code"}
CSV_FIELDS = ["created_at", "actor_type", "actor", "tenant", "action", "object_type", "object_id", "details",
              "request_id", "ip"]


def _secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_KEYS or any(word in lowered for word in SECRET_WORDS)


def scrub(value: Any) -> Any:
    """``value`` with every dict entry whose key looks like a secret removed; JSON-safe scalars kept."""
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items() if not _secret(str(k))}
    if isinstance(value, list | tuple | set):
        return [scrub(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class AuditContextMiddleware:
    """Keeps the request being served where ``record`` can find its actor, request ID and client address."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


@contextlib.contextmanager
def system(name: str) -> Iterator[None]:
    """Record the events inside as done by the system job ``name`` (a worker, a command), not by a request."""
    token, req = _system.set(name), _request.set(None)
    try:
        yield
    finally:
        _request.reset(req)
        _system.reset(token)


def _client_ip(request) -> str | None:
    # REMOTE_ADDR only: nginx in front sets it from the real peer (deploy/), a client's X-Forwarded-For is not
    # trusted here.
    return request.META.get("REMOTE_ADDR") or None


def _actor(request) -> tuple[str, Any, str]:
    if request is None:
        return AuditEvent.ActorType.SYSTEM, None, _system.get() or logs.current("task") or "system"
    auth = getattr(request, "auth", None)
    user = getattr(request, "user", None)
    if isinstance(auth, ApiToken):
        return AuditEvent.ActorType.TOKEN, auth.user, f"{auth.prefix} ({auth.user.username})"
    bound = getattr(user, "bound_tenant", None)  # an SAE certificate: not a user row
    if bound is not None:
        return AuditEvent.ActorType.TOKEN, None, f"sae:{getattr(user, 'username', '')}"
    if user is not None and getattr(user, "is_authenticated", False):
        return AuditEvent.ActorType.USER, user, user.get_username()
    return AuditEvent.ActorType.SYSTEM, None, _system.get() or "anonymous"


def record(action: str, *, tenant: Tenant | int | None = None, obj: Any = None, object_type: str = "",
           object_id: str = "", details: dict[str, Any] | None = None, user=None) -> AuditEvent | None:
    """Append one audit event. ``obj``: the model instance acted on (its class name and pk name it, unless
    ``object_type``/``object_id`` say otherwise). ``user``: the actor when there is no request to read it from
    (a sign-in). Written in the caller's transaction, so a rolled-back action leaves no event; a failure to
    write is logged and never fails the action itself."""
    request = _request.get()
    actor_type, actor_user, actor = _actor(request)
    if user is not None and actor_type != AuditEvent.ActorType.TOKEN:
        actor_type, actor_user, actor = AuditEvent.ActorType.USER, user, user.get_username()
    if obj is not None:
        object_type = object_type or type(obj).__name__.lower()
        object_id = object_id or str(getattr(obj, "uuid", None) or getattr(obj, "slug", None) or obj.pk)
    tenant_id = tenant if isinstance(tenant, int) or tenant is None else tenant.pk
    event = AuditEvent(
        actor_type=actor_type, actor_user=actor_user if getattr(actor_user, "pk", None) else None,
        actor=actor[:200], tenant_id=tenant_id, action=action, object_type=object_type[:60],
        object_id=str(object_id)[:200], details=scrub(details or {}),
        request_id=(getattr(request, "request_id", None) or logs.current("request_id") or "")[:64],
        ip=_client_ip(request) if request is not None else None,
    )

    try:
        with transaction.atomic():  # a savepoint: a failed insert leaves the caller's transaction usable
            event.save(force_insert=True)
    except Exception:  # the audit must not undo what was done; the log line keeps the trace
        log.exception("audit: could not record %s on %s:%s", action, object_type, object_id)
        return None
    return event


# -- sign-ins ----------------------------------------------------------------------------------------------------
def _signed_in(sender, request, user, **_kwargs) -> None:
    # allauth calls Django's login() once every step (password, then the TOTP code) has passed.
    record("auth.signed_in", user=user, object_type="user", object_id=user.get_username(),
           details={"staff": user.is_staff})


def _sign_in_failed(sender, credentials, request=None, **_kwargs) -> None:
    who = str(credentials.get("username") or credentials.get("email") or "")[:150]
    record("auth.sign_in_failed", object_type="user", object_id=who)


def _signed_out(sender, request, user, **_kwargs) -> None:
    if user is not None:
        record("auth.signed_out", user=user, object_type="user", object_id=user.get_username())


def connect_sign_in_signals() -> None:
    from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed

    user_logged_in.connect(_signed_in, dispatch_uid="tenants.audit.signed_in")
    user_login_failed.connect(_sign_in_failed, dispatch_uid="tenants.audit.sign_in_failed")
    user_logged_out.connect(_signed_out, dispatch_uid="tenants.audit.signed_out")


# -- reading ----------------------------------------------------------------------------------------------------
def _when(params, name: str) -> datetime | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        when = parse_datetime(raw)
    except ValueError:
        when = None
    if when is None:
        raise BadRequest(f"{name} must be an ISO 8601 date-time, e.g. 2026-11-01T00:00:00Z")
    return when


def filtered(params, tenant: Tenant | None = None):
    """Events filtered by ``params`` (``tenant`` slug, ``actor`` substring, ``action`` exact or prefix ending in
    ``.``, ``since``, ``until``); only ``tenant``'s own when given (a tenant never sees another's)."""
    if tenant is not None:
        qs = AuditEvent.objects.for_tenant(tenant)
    else:
        qs = AuditEvent.objects.unscoped()
        if params.get("tenant"):
            qs = qs.filter(tenant__slug=params["tenant"])
    qs = qs.select_related("tenant")
    if params.get("actor"):
        qs = qs.filter(actor__icontains=params["actor"])
    action = params.get("action")
    if action:
        qs = qs.filter(action__startswith=action) if action.endswith(".") else qs.filter(action=action)
    since, until = _when(params, "since"), _when(params, "until")
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    return qs


def csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """The events as CSV lines (a header first), for a streaming response."""
    import json

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    yield writer.writerow(CSV_FIELDS)
    for e in events:
        yield writer.writerow([e.created_at.isoformat(), e.actor_type, e.actor, e.tenant.slug if e.tenant else "",
                               e.action, e.object_type, e.object_id, json.dumps(e.details, sort_keys=True),
                               e.request_id, e.ip or ""])
