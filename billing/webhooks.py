"""Signed webhooks out: invoice finalized, credit note issued, quota thresholds (80 %, 100 %).

``emit`` writes one ``WebhookDelivery`` per interested endpoint inside the caller's transaction (an outbox: the
event commits with what caused it) and, after commit, asks Celery to deliver it. ``attempt`` POSTs the JSON
body signed like Stripe's: header ``QXaaS-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<body>")>``. A 2xx answer delivers it; anything else is retried with exponential backoff
(``BILLING_WEBHOOK_BACKOFF_SECONDS`` x 2^(attempt-1)) up to ``BILLING_WEBHOOK_MAX_ATTEMPTS``. Every attempt is
recorded (``WebhookAttempt``). An attempt first claims the delivery by a conditional UPDATE, so the task's own
retry and the beat sweep (``deliver_due``) never send the same attempt twice.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from portal.celery_app import app as celery_app
from portal.errors import BadRequest
from tenants.models import Tenant

from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "QXaaS-Signature"
# A claimed attempt is not picked up again for this long (it has at most the request timeout to finish).
CLAIM_SECONDS = 120
REQUEST_TIMEOUT = 10


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance: int = 300, now: float | None = None) -> bool:
    """What a receiver does: recompute the HMAC and compare in constant time; refuse stale timestamps."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def check_url(url: str) -> None:
    """A tenant's endpoint must be http(s) and, unless ``BILLING_WEBHOOK_ALLOW_PRIVATE``, resolve only to public
    addresses: the portal must not be made to POST into the operator's own network (loopback, private,
    link-local, metadata addresses). Checked when the endpoint is saved and again before every attempt."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("a webhook URL is http:// or https:// with a host")
    if settings.BILLING_WEBHOOK_ALLOW_PRIVATE:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise BadRequest(f"cannot resolve {parts.hostname!r}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_global:
            raise BadRequest(f"{parts.hostname!r} resolves to a non-public address; webhooks go to public hosts")


def _endpoints(tenant: Tenant | None, event: str) -> list[WebhookEndpoint]:
    scope = Q(tenant__isnull=True) | Q(tenant=tenant) if tenant is not None else Q(tenant__isnull=True)
    return [e for e in WebhookEndpoint.objects.unscoped().filter(scope, active=True) if e.wants(event)]


def emit(event: str, tenant: Tenant | None, data: dict, *, event_id: str) -> list[WebhookDelivery]:
    """Record the event for every interested endpoint (once per ``event_id``) and deliver after commit."""
    created = []
    body = {"id": event_id, "type": event, "created": timezone.now().isoformat(),
            "tenant": tenant.slug if tenant else None, "data": data}
    for endpoint in _endpoints(tenant, event):
        delivery, new = WebhookDelivery.objects.unscoped().get_or_create(
            endpoint=endpoint, event_id=event_id, defaults={"tenant": tenant, "event": event, "payload": body})
        if new:
            created.append(delivery)
    if created:
        ids = [d.pk for d in created]
        transaction.on_commit(lambda: _enqueue(ids))
    return created


def _enqueue(ids: list[int]) -> None:
    # By name: the tasks module wraps this one (importing it here would make a cycle).
    for pk in ids:
        try:
            celery_app.send_task("billing.tasks.deliver_webhook", args=[pk])
        except Exception:
            log.warning("could not enqueue webhook delivery %s; the sweep will retry", pk)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=settings.BILLING_WEBHOOK_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0))


def attempt(delivery_id: int, now: datetime | None = None) -> WebhookDelivery | None:
    """Make one attempt if the delivery is due; returns it (None if not due or taken by another worker)."""
    now = now or timezone.now()
    claimed = WebhookDelivery.objects.unscoped().filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now,
    ).update(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.unscoped().select_related("endpoint").get(pk=delivery_id)
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "QXaaS-Webhooks/1",
               SIGNATURE_HEADER: sign(delivery.endpoint.secret, body, int(time.time())),
               "QXaaS-Event": delivery.event, "QXaaS-Delivery": str(delivery.pk)}
    started = time.monotonic()
    code, error = None, ""
    try:
        if delivery.endpoint.tenant_id is not None:
            check_url(delivery.endpoint.url)
        response = requests.post(delivery.endpoint.url, data=body, headers=headers, timeout=REQUEST_TIMEOUT,
                                 allow_redirects=False)
        code = response.status_code
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    except BadRequest as exc:
        error = f"refused: {exc.message}"[:1000]
    number = delivery.attempts + 1
    WebhookAttempt.objects.create(delivery=delivery, number=number, at=now, status_code=code, error=error,
                                  duration_ms=int((time.monotonic() - started) * 1000))
    delivery.attempts = number
    delivery.last_status_code = code
    if code is not None and 200 <= code < 300:
        delivery.status = WebhookDelivery.Status.DELIVERED
        delivery.delivered_at = timezone.now()
    elif number >= settings.BILLING_WEBHOOK_MAX_ATTEMPTS:
        delivery.status = WebhookDelivery.Status.FAILED
    else:
        delivery.next_attempt_at = timezone.now() + backoff(number)
    delivery.save(update_fields=["attempts", "last_status_code", "status", "delivered_at", "next_attempt_at"])
    return delivery


def due(now: datetime | None = None, limit: int = 100) -> list[int]:
    """Pending deliveries whose next attempt is due (the sweep's work list)."""
    return list(WebhookDelivery.objects.unscoped().filter(
        status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now or timezone.now())
        .order_by("next_attempt_at").values_list("pk", flat=True)[:limit])
