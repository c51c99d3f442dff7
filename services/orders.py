"""Service orders: the one lifecycle of every service a tenant orders and that lives over time.

Key streams, IPsec tunnels and TLS sessions are ``ServiceOrder`` subclasses (``services.models``). This module
moves them through their lives with the same guarantees for all:

- ``place``: the concurrent meter (``key_streams``, ``ipsec_tunnels``...) is consumed and the row inserted in
  one transaction; provisioning is enqueued only after the commit (``on_commit``), so a worker never looks for
  a row that is not there yet, and a refusal leaves nothing behind.
- ``advance``: a conditional ``UPDATE`` from the states the caller expects; of two workers racing for the same
  transition exactly one wins (the other gets False and must not act).
- ``finish``: to a terminal state from any live one, releasing the concurrent meter exactly once and metering
  the rest of the order's active time, in one transaction.
- Duration metering: the time from ``activated_at`` to the close is written to the usage ledger in the
  order's ``duration_meter`` (seconds), one row per clock hour it touches, each dated at its start, so no
  hour, day or billing period ever cuts a row in two. The periodic job meters whole hours of live orders;
  ``finish`` meters the remainder. ``metered_until`` is the watermark, moved by compare-and-set in the same
  transaction as the rows: run twice or concurrently, every second is metered once.
- ``maintain_all``: the one periodic job for every order type (expiry, duration metering and each type's own
  ``maintain`` hook), run by Celery beat (``services.tasks.maintain_orders``).

Each app registers its order types in its ``AppConfig.ready()`` with ``register``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.db import models, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from tenants import audit, quota
from tenants.models import Tenant

from .models import ServiceOrder

log = logging.getLogger(__name__)
Order = TypeVar("Order", bound=ServiceOrder)
REASON_MAX = 2000


@dataclass(frozen=True)
class OrderType:
    model: type[ServiceOrder]
    expire: Callable[[ServiceOrder], bool]
    maintain: Callable[[], Any] | None


_TYPES: dict[str, OrderType] = {}


def register(model: type[ServiceOrder], *, expire: Callable[[ServiceOrder], bool] | None = None,
             maintain: Callable[[], Any] | None = None) -> None:
    """Make ``model`` an order type the periodic job maintains. ``expire(order)`` ends a live order past its
    ``expires_at`` (default: ``finish(order, "expired")``); ``maintain()`` is the type's own periodic work
    (keep it short; enqueue a task of its own for long work)."""
    _TYPES[model.order_kind] = OrderType(model, expire or (lambda order: finish(order, "expired", "expired")),
                                         maintain)


def order_types() -> list[OrderType]:
    return list(_TYPES.values())


def _rows(order: ServiceOrder) -> models.QuerySet:
    return type(order).objects.for_tenant(order.tenant_id).filter(pk=order.pk)


def _now_value(now: datetime) -> Value:
    return Value(now, output_field=models.DateTimeField())


# -- the lifecycle ------------------------------------------------------------------------------------------
def place(model: type[Order], tenant: Tenant, *, reference: str = "",
          on_commit: Callable[[Order], None] | None = None, **fields: Any) -> Order:
    """Take one slot of ``model.concurrent_meter`` (``QuotaExceeded`` when none is free) and insert the order,
    in one transaction (the caller's, when it holds one). ``on_commit(order)`` runs after the commit."""
    order_uuid = fields.pop("uuid", None) or uuid.uuid4()
    state = fields.pop("state", model.initial_state)
    now = timezone.now()
    if state in model.active_states:
        fields.setdefault("activated_at", now)
        fields.setdefault("metered_until", fields["activated_at"])
    with transaction.atomic():
        quota.consume(tenant, model.concurrent_meter, 1, f"order:{order_uuid}:place",
                      reference=reference or f"{model.order_kind}:{order_uuid}", order_id=order_uuid)
        order = model(uuid=order_uuid, tenant=tenant, state=state, **fields)
        order.save(force_insert=True)
        audit.record("order.placed", tenant=tenant, obj=order, object_type=model.order_kind,
                     details={"kind": model.order_kind, "state": state, "reference": reference})
        if on_commit is not None:
            transaction.on_commit(lambda: on_commit(order))
    return order


def advance(order: ServiceOrder, to_state: str, *, expected: tuple[str, ...] | list[str], **fields: Any) -> bool:
    """Move ``order`` to the live state ``to_state`` if it is in one of ``expected`` now; False (and nothing
    changed) when another worker moved it first. The first entry into an active state sets ``activated_at``
    (duration metering starts there). ``fields``: other columns to set in the same update."""
    model = type(order)
    if to_state not in model.live_states:
        raise ValueError(f"{to_state!r} is not a live state of {model.__name__}: use finish()")
    updates: dict[str, Any] = {"state": to_state, **fields}
    if to_state in model.active_states:
        now = _now_value(timezone.now())
        updates["activated_at"] = Coalesce(F("activated_at"), now)
        updates["metered_until"] = Coalesce(F("metered_until"), F("activated_at"), now)
    if not _rows(order).filter(state__in=list(expected)).update(**updates):
        return False
    order.state = to_state
    for name, value in fields.items():
        setattr(order, name, value)
    order.refresh_from_db(fields=["activated_at", "metered_until"])
    return True


def finish(order: ServiceOrder, state: str, reason: str = "") -> bool:
    """End a live order in the terminal ``state``: release its concurrent meter exactly once and meter the rest
    of its active time, in one transaction. False when it had already ended (nothing done)."""
    model = type(order)
    if state in model.live_states:
        raise ValueError(f"{state!r} is a live state of {model.__name__}")
    now = timezone.now()
    with transaction.atomic():
        won = _rows(order).filter(state__in=model.live_states).update(state=state, closed_at=now,
                                                                     reason=reason[:REASON_MAX])
        if won:
            quota.release(order.tenant, model.concurrent_meter, 1, f"order:{order.uuid}:release",
                          reference=f"{model.order_kind}:{order.uuid}:{state}", order_id=order.uuid)
            order.state, order.closed_at, order.reason = state, now, reason[:REASON_MAX]
            meter_duration(order, until=now)
            audit.record("order.closed", tenant=order.tenant_id, obj=order, object_type=model.order_kind,
                         details={"kind": model.order_kind, "state": state, "reason": reason[:500]})
    return bool(won)


# -- duration metering --------------------------------------------------------------------------------------
def _hour_after(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _whole_seconds(at: datetime) -> int:
    return math.floor(at.timestamp())


def duration_pieces(start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """``[start, end)`` cut at every clock hour: (piece start, whole seconds). The seconds are differences of
    whole epoch seconds, so pieces metered separately add up to exactly ``floor(end) - floor(start)``."""
    pieces = []
    while start < end:
        stop = min(_hour_after(start), end)
        pieces.append((start, _whole_seconds(stop) - _whole_seconds(start)))
        start = stop
    return pieces


def meter_duration(order: ServiceOrder, until: datetime | None = None) -> int:
    """Write the order's active seconds from its watermark to ``until`` (default: now; never past its close)
    to the ledger; returns the seconds written. Exactly once: the watermark moves by compare-and-set in the
    same transaction as the rows, so a concurrent or repeated run finds nothing left to meter."""
    model = type(order)
    if not model.duration_meter:
        return 0
    with transaction.atomic():
        row = model._base_manager.filter(pk=order.pk).values(
            "activated_at", "metered_until", "closed_at", "tenant_id").first()
        if row is None or row["activated_at"] is None:
            return 0
        start = row["metered_until"] or row["activated_at"]
        end = min(until or timezone.now(), row["closed_at"] or datetime.max.replace(tzinfo=UTC))
        if end <= start:
            return 0
        watermark = Q(metered_until=row["metered_until"]) if row["metered_until"] else Q(metered_until__isnull=True)
        if not model._base_manager.filter(watermark, pk=order.pk).update(metered_until=end):
            return 0  # a concurrent run moved the watermark first: it meters this span
        tenant = Tenant.objects.get(pk=row["tenant_id"])
        written = 0
        for at, seconds in duration_pieces(start, end):
            key = f"order:{order.uuid}:{model.duration_meter}:{at.timestamp():.6f}"
            if quota.record_duration(tenant, model.duration_meter, seconds, key, at=at, order_id=order.uuid,
                                     reference=f"{model.order_kind}:{order.uuid}"):
                written += seconds
    order.metered_until = end
    return written


def meter_durations(now: datetime | None = None) -> int:
    """Meter the whole hours of every live, active order (periodic job); ``finish`` meters the rest. Returns
    the seconds written."""
    last_hour = (now or timezone.now()).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    written = 0
    for kind in order_types():
        model = kind.model
        if not model.duration_meter:
            continue
        due = model.objects.unscoped().filter(state__in=model.live_states, activated_at__lt=last_hour).filter(
            Q(metered_until__isnull=True) | Q(metered_until__lt=last_hour))
        for order in due.only("pk", "uuid", "tenant_id"):
            written += meter_duration(order, until=last_hour)
    return written


# -- the periodic job ---------------------------------------------------------------------------------------
def expire_due(now: datetime | None = None) -> int:
    """End every live order past its ``expires_at`` with its type's ``expire``; returns how many ended."""
    now = now or timezone.now()
    ended = 0
    for kind in order_types():
        due = kind.model.objects.unscoped().select_related("tenant").filter(
            state__in=kind.model.live_states, expires_at__lte=now)
        for order in due:
            ended += bool(kind.expire(order))
    return ended


def maintain_all() -> dict[str, Any]:
    """Expiry, duration metering, then each order type's own maintenance; one failing part does not stop the
    others (it is logged and retried on the next run)."""
    out: dict[str, Any] = {}
    for name, job in (("expired", expire_due), ("metered_seconds", meter_durations)):
        try:
            out[name] = job()
        except Exception:
            log.exception("service orders: %s failed", name)
    for kind in order_types():
        if kind.maintain is None:
            continue
        try:
            out[kind.model.order_kind] = kind.maintain()
        except Exception:
            log.exception("service orders: maintaining %s failed", kind.model.order_kind)
    return out
