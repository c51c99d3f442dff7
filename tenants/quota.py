"""The quota service: one entry point to check and record usage atomically.

``consume`` decides and records in one database transaction: a conditional ``UPDATE`` on the window's
counter (``used + amount <= limit``) takes the row lock on PostgreSQL and is serialised by the IMMEDIATE
write transaction on SQLite, so concurrent requests can never overshoot a quota; the usage-ledger row is
written in the same transaction, so ledger == counters by construction. The same idempotency key twice
records once.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from portal.errors import BadRequest, Conflict, Forbidden, QuotaExceeded

from .meters import METERS, UNLIMITED, Meter, Window, quota_key, split_quota_key, window_bounds
from .models import PlanQuota, QuotaCounter, QuotaReservation, Tenant, TenantQuotaOverride, UsageRecord

# Quoted names for the two hot statements written in SQL (meter_states, _add); the tenant filter is explicit there.
_qn = connection.ops.quote_name
_TABLE = {"plan": _qn(PlanQuota._meta.db_table), "override": _qn(TenantQuotaOverride._meta.db_table),
          "counter": _qn(QuotaCounter._meta.db_table)}
_COL = {"qk": _qn(QuotaCounter._meta.get_field("quota_key").column),
        "ws": _qn(QuotaCounter._meta.get_field("window_start").column),
        "used": _qn(QuotaCounter._meta.get_field("used").column),
        "limit": _qn(PlanQuota._meta.get_field("limit").column),
        "plan": _qn(PlanQuota._meta.get_field("plan").column),
        "tenant": _qn(QuotaCounter._meta.get_field("tenant").column)}


@dataclass(frozen=True)
class QuotaState:
    quota_key: str
    meter: str
    window: Window
    unit: str
    limit: int
    used: int
    reset_at: datetime | None

    @property
    def unlimited(self) -> bool:
        return self.limit == UNLIMITED

    @property
    def remaining(self) -> int | None:
        return None if self.unlimited else max(self.limit - self.used, 0)

    def seconds_to_reset(self, now: datetime | None = None) -> int | None:
        if self.reset_at is None:
            return None
        return max(0, math.ceil((self.reset_at - (now or timezone.now())).total_seconds()))


def _meter(name: str) -> Meter:
    try:
        return METERS[name]
    except KeyError:
        raise BadRequest(f"unknown meter {name!r}", details={"meters": sorted(METERS)}) from None


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise BadRequest("amount must be a positive integer")


def _check_idempotency_key(key: str) -> None:
    if not key or len(key) > 200:
        raise BadRequest("an idempotency key of 1 to 200 characters is required")


def effective_limits(tenant: Tenant) -> dict[str, int]:
    """The plan's limits with the tenant's overrides applied."""
    limits = tenant.plan.limits()
    for override in TenantQuotaOverride.objects.for_tenant(tenant):
        limits[override.quota_key] = override.limit
    return limits


def quota_states(tenant: Tenant, at: datetime | None = None, meters: list[str] | None = None,
                 limits: dict[str, int] | None = None) -> list[QuotaState]:
    """Limit, use and reset time of every quota key (or those of the given meters) right now.

    ``limits``: the tenant's ``effective_limits`` when the caller already read them in this request."""
    at = at or timezone.now()
    limits = effective_limits(tenant) if limits is None else limits
    windows = {}
    for key in limits:
        meter_name, window = split_quota_key(key)
        if meters is None or meter_name in meters:
            windows[key] = (meter_name, window, *window_bounds(window, at))
    # Only the current windows' counters (the table keeps every past window too).
    counters = {
        c.quota_key: c.used
        for c in QuotaCounter.objects.for_tenant(tenant).filter(
            quota_key__in=list(windows), window_start__in={start for _, _, start, _ in windows.values()})
        if c.window_start == windows[c.quota_key][2]
    } if windows else {}
    return [QuotaState(key, meter_name, window, METERS[meter_name].unit, limits[key], counters.get(key, 0), end)
            for key, (meter_name, window, _start, end) in windows.items()]


def meter_states(tenant: Tenant, meter: str, at: datetime | None = None) -> list[QuotaState]:
    """``quota_states`` of one meter in one query: the plan's limits, the tenant's overrides and the current
    windows' counters, read together (a UNION ALL) on the hot path of every key request.

    Plain SQL: building the same UNION with the ORM cost more CPU than the database round trip it saves."""
    spec = _meter(meter)
    at = at or timezone.now()
    bounds = {quota_key(meter, w): (w, *window_bounds(w, at)) for w in spec.windows}
    keys = list(bounds)
    marks = ", ".join(["%s"] * len(keys))
    current = " OR ".join([f"({_COL['qk']} = %s AND {_COL['ws']} = %s)"] * len(keys))
    # Names from the models' _meta, values as parameters.
    sql = (f"SELECT 0, {_COL['qk']}, {_COL['limit']} FROM {_TABLE['plan']} WHERE {_COL['plan']} = %s "  # noqa: S608
           f"AND {_COL['qk']} IN ({marks}) "
           f"UNION ALL SELECT 1, {_COL['qk']}, {_COL['limit']} FROM {_TABLE['override']} WHERE {_COL['tenant']} = %s "
           f"AND {_COL['qk']} IN ({marks}) "
           f"UNION ALL SELECT 2, {_COL['qk']}, {_COL['used']} FROM {_TABLE['counter']} WHERE {_COL['tenant']} = %s "
           f"AND ({current})")
    adapt = connection.ops.adapt_datetimefield_value
    params = [tenant.plan_id, *keys, tenant.pk, *keys, tenant.pk,
              *(p for key, (_, start, _) in bounds.items() for p in (key, adapt(start)))]
    plan, override, used = {}, {}, {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for source, key, value in cursor.fetchall():
            (plan, override, used)[source][key] = value
    return [QuotaState(key, meter, window, spec.unit, override.get(key, plan.get(key, 0)), used.get(key, 0), end)
            for key, (window, _start, end) in bounds.items()]


def ratelimit_headers(states: list[QuotaState], now: datetime | None = None) -> dict[str, str]:
    """IETF draft ``RateLimit-Policy`` / ``RateLimit`` headers plus ``X-RateLimit-*`` for the tightest quota."""
    limited = [s for s in states if not s.unlimited]
    if not limited:
        return {}
    policies, current = [], []
    for s in limited:
        window = f";w={s.seconds_to_reset(now) if s.window != Window.CONCURRENT else 0}"
        policies.append(f'"{s.quota_key}";q={s.limit}' + (window if s.window != Window.CONCURRENT else ""))
        reset = s.seconds_to_reset(now)
        current.append(f'"{s.quota_key}";r={s.remaining}' + (f";t={reset}" if reset is not None else ""))
    tightest = min(limited, key=lambda s: s.remaining or 0)
    headers = {
        "RateLimit-Policy": ", ".join(policies),
        "RateLimit": ", ".join(current),
        "X-RateLimit-Limit": str(tightest.limit),
        "X-RateLimit-Remaining": str(tightest.remaining),
    }
    if tightest.reset_at is not None:
        headers["X-RateLimit-Reset"] = str(int(tightest.reset_at.timestamp()))
    return headers


def check(tenant: Tenant, meter: str, amount: int, limits: dict[str, int] | None = None) -> dict[str, int]:
    """Raise ``QuotaExceeded`` if ``amount`` would not fit now; records nothing (a cheap pre-check before
    taking a scarce resource; ``consume`` still decides).

    Returns the meter's limits it checked against, for ``consume`` in the same request (``limits``: the
    tenant's ``effective_limits`` when the caller already read them; otherwise one query reads limits and use)."""
    now = timezone.now()
    if limits is None:
        states = meter_states(tenant, meter, now)
    else:
        states = quota_states(tenant, now, meters=[_meter(meter).name], limits=limits)
    for state in states:
        if state.remaining is not None and state.remaining < amount:
            raise _exceeded(state.quota_key, state.limit, state.unit, state.used, amount, states, now)
    return {state.quota_key: state.limit for state in states}


def _exceeded(key: str, limit: int, unit: str, used: int, amount: int, states: list[QuotaState],
              now: datetime) -> QuotaExceeded:
    """The one refusal ``check`` and ``consume`` both raise, with the meter's RateLimit headers."""
    return QuotaExceeded(
        f"quota {key} exceeded: {used} of {limit} {unit}s used, {amount} requested",
        details={"quota": key, "limit": limit, "used": used, "requested": amount},
        headers=ratelimit_headers(states, now),
    )


def _replayed(tenant: Tenant, meter: str, amount: int, key: str, kind: str) -> UsageRecord | None:
    existing = UsageRecord.objects.for_tenant(tenant).filter(idempotency_key=key).first()
    if existing is None:
        return None
    if existing.meter != meter or abs(existing.quantity) != amount or existing.kind != kind:
        raise Conflict(
            "this idempotency key was already used for a different usage",
            details={"idempotency_key": key},
        )
    existing.replayed = True
    return existing


def _counter(tenant: Tenant, key: str, window_start: datetime) -> QuotaCounter:
    counter, _ = QuotaCounter.objects.for_tenant(tenant).get_or_create(
        tenant=tenant, quota_key=key, window_start=window_start
    )
    return counter


class _OverLimit(Exception):
    def __init__(self, key: str, limit: int) -> None:
        super().__init__(key)
        self.key, self.limit = key, limit


def _add_statement(tenant: Tenant, key: str, window_start: datetime, amount: int, limit: int) -> tuple[str, list]:
    """The conditional ``UPDATE`` of ``_add``: one row when ``amount`` fits in the window's counter."""
    sql = (f"UPDATE {_TABLE['counter']} SET {_COL['used']} = {_COL['used']} + %s WHERE {_COL['tenant']} = %s "  # noqa: S608
           f"AND {_COL['qk']} = %s AND {_COL['ws']} = %s")
    params = [amount, tenant.pk, key, connection.ops.adapt_datetimefield_value(window_start)]
    if limit != UNLIMITED:
        sql += f" AND {_COL['used']} <= %s"
        params.append(limit - amount)
    return sql, params


_LEDGER_FIELDS = ("tenant", "meter", "kind", "quantity", "unit", "reference", "idempotency_key", "order_id",
                  "created_at")
_LEDGER_INSERT = (
    f"INSERT INTO {_qn(UsageRecord._meta.db_table)} "  # noqa: S608 - names from the model
    f"({', '.join(_qn(UsageRecord._meta.get_field(f).column) for f in _LEDGER_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(_LEDGER_FIELDS))}) "
    f"ON CONFLICT ({', '.join(_qn(UsageRecord._meta.get_field(f).column) for f in ('tenant', 'idempotency_key'))}) "
    "DO NOTHING RETURNING "
    f"{_qn(UsageRecord._meta.pk.column)}")


class _NotTheCommonCase(Exception):
    pass


def _consume_pipelined(tenant: Tenant, meter: str, amount: int, idempotency_key: str, reference: str,
                       limits: dict[str, int], then: Callable[[UsageRecord], None] | None,
                       now: datetime, order_id: uuid.UUID | None = None) -> UsageRecord | None:
    """``consume``'s common case on PostgreSQL in two round trips instead of six: the windows' conditional
    ``UPDATE``s, the ledger row and ``then``'s statements are sent together (psycopg's pipeline mode), then
    ``COMMIT``. The decision is the same (each ``UPDATE`` takes its row lock and adds only within the limit).

    Returns None, having changed nothing (rolled back), when it is not the common case: a window's first use
    (no counter row yet), a limit that would be exceeded, a replayed idempotency key, any error. ``consume``'s
    general path then decides and explains, as it always did."""
    spec = METERS[meter]
    keys = [quota_key(meter, window) for window in spec.windows]
    if connection.vendor != "postgresql" or connection.in_atomic_block or any(k not in limits for k in keys):
        return None
    record = UsageRecord(tenant=tenant, meter=meter, kind=UsageRecord.Kind.CONSUME, quantity=amount,
                         unit=spec.unit, reference=reference[:200], idempotency_key=idempotency_key,
                         order_id=order_id, created_at=now)
    statements = [_add_statement(tenant, key, window_bounds(window, now)[0], amount, limits[key])
                  for window, key in zip(spec.windows, keys, strict=True)]
    statements.append((_LEDGER_INSERT, [tenant.pk, meter, record.kind, amount, spec.unit, record.reference,
                                        idempotency_key, order_id, connection.ops.adapt_datetimefield_value(now)]))
    # A replayed idempotency key inserts no ledger row (rowcount 0): not the common case either.
    done = _pipeline(statements, then=None if then is None else lambda: then(record))
    if done is None:
        return None
    inserted = done[-1][1]
    record.pk = inserted[0]
    record._state.adding = False
    record.replayed = False
    return record


def _add(tenant: Tenant, key: str, window_start: datetime, amount: int, limit: int) -> bool:
    """Add ``amount`` to the window's counter if it stays within ``limit``; False when it would not.

    The conditional UPDATE is the decision (it takes the row lock). The counter row is created only when the
    UPDATE found none, so the common case is one statement instead of a SELECT and an UPDATE. Plain SQL: two of
    these run in every metered request, and the ORM spent more CPU building each than the database executing it."""
    sql, params = _add_statement(tenant, key, window_start, amount, limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.rowcount:
            return True
    counter = _counter(tenant, key, window_start)  # the first use in this window, or really over the limit
    rows = QuotaCounter.objects.for_tenant(tenant).filter(pk=counter.pk)
    if limit != UNLIMITED:
        rows = rows.filter(used__lte=limit - amount)
    return rows.update(used=F("used") + amount) == 1


def consume(tenant: Tenant, meter: str, amount: int, idempotency_key: str, reference: str = "",
            limits: dict[str, int] | None = None,
            then: Callable[[UsageRecord], None] | None = None, order_id: uuid.UUID | None = None) -> UsageRecord:
    """Check every quota of ``meter`` and record ``amount`` in the ledger, all or nothing.

    Raises ``QuotaExceeded`` (nothing recorded) when any window would go over its limit. Calling again with
    the same ``idempotency_key`` returns the first record and consumes nothing more; the returned record's
    ``replayed`` attribute tells which case it was. ``order_id``: the service order the usage belongs to.
    ``limits``: the limits of ``meter``'s quota keys when the
    caller already read them in this request (``check``'s result or ``effective_limits``; saves queries).

    ``then(record)`` runs in the same transaction right after a new ledger row is written (not for a replay):
    the caller's own rows commit or roll back with the consumption, without a transaction of its own around
    this one (which would cost a savepoint, two more round trips, per request). It may run twice (a pipelined
    attempt that is rolled back, then the general path): only its statements in the committed transaction
    count, so it must do nothing but database writes.
    """
    spec = _meter(meter)
    _check_amount(amount)
    _check_idempotency_key(idempotency_key)
    if not tenant.is_active:
        raise Forbidden(f"tenant {tenant.slug!r} is suspended")
    now = timezone.now()
    if limits is not None:
        record = _consume_pipelined(tenant, meter, amount, idempotency_key, reference, limits, then, now, order_id)
        if record is not None:
            return record
    try:
        with transaction.atomic():
            # No look-up of the idempotency key first: the ledger's unique constraint catches a replay at the
            # INSERT (IntegrityError below), and this block's rollback (a savepoint's when the caller holds a
            # transaction) takes the counter updates back with it. A replay refused for quota is recognised
            # before the refusal is raised.
            limits = effective_limits(tenant) if limits is None else limits
            for window in spec.windows:
                key = quota_key(meter, window)
                if not _add(tenant, key, window_bounds(window, now)[0], amount, limits[key]):
                    raise _OverLimit(key, limits[key])  # rolls back the windows already counted
            record = UsageRecord.objects.create(
                tenant=tenant, meter=meter, kind=UsageRecord.Kind.CONSUME, quantity=amount, unit=spec.unit,
                reference=reference[:200], idempotency_key=idempotency_key, order_id=order_id, created_at=now,
            )
            record.replayed = False
            if then is not None:
                then(record)
            return record
    except _OverLimit as over:
        replay = _replayed(tenant, meter, amount, idempotency_key, UsageRecord.Kind.CONSUME)
        if replay is not None:  # recorded before, when it still fitted: a replay, not a new consumption
            return replay
        states = quota_states(tenant, now, meters=[meter])
        state = next(s for s in states if s.quota_key == over.key)
        raise _exceeded(over.key, over.limit, spec.unit, state.used, amount, states, now) from None
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race; its record stands.
        replay = _replayed(tenant, meter, amount, idempotency_key, UsageRecord.Kind.CONSUME)
        if replay is None:
            raise
        return replay


def release(
    tenant: Tenant,
    meter: str,
    amount: int,
    idempotency_key: str,
    reference: str = "",
    consumed_at: datetime | None = None,
    order_id: uuid.UUID | None = None,
) -> UsageRecord:
    """Give back ``amount`` of ``meter`` (a failed delivery, a closed tunnel) as a negative ledger row.

    ``consumed_at`` names the windows the original consumption was counted in (default: now). Idempotent
    like ``consume``. Cannot give back more than the window's counter holds.
    """
    spec = _meter(meter)
    _check_amount(amount)
    _check_idempotency_key(idempotency_key)
    try:
        with transaction.atomic():
            replay = _replayed(tenant, meter, amount, idempotency_key, UsageRecord.Kind.RELEASE)
            if replay is not None:
                return replay
            at = consumed_at or timezone.now()
            for window in spec.windows:
                key = quota_key(meter, window)
                counter = _counter(tenant, key, window_bounds(window, at)[0])
                rows = QuotaCounter.objects.for_tenant(tenant).filter(pk=counter.pk, used__gte=amount)
                if rows.update(used=F("used") - amount) == 0:
                    raise _OverLimit(key, amount)  # rolls back what earlier windows gave back
            return UsageRecord.objects.create(
                tenant=tenant, meter=meter, kind=UsageRecord.Kind.RELEASE, quantity=-amount, unit=spec.unit,
                reference=reference[:200], idempotency_key=idempotency_key, order_id=order_id,
            )
    except _OverLimit as short:
        # A concurrent release with the same key may have taken the counter first (its row lock made this
        # UPDATE wait, then find too little): that is a replay, not an over-release.
        replay = _replayed(tenant, meter, amount, idempotency_key, UsageRecord.Kind.RELEASE)
        if replay is not None:
            return replay
        raise Conflict(f"cannot release {amount} {spec.unit}s of {short.key}: more than was consumed") from None
    except IntegrityError:
        replay = _replayed(tenant, meter, amount, idempotency_key, UsageRecord.Kind.RELEASE)
        if replay is None:
            raise
        return replay


def record_duration(tenant: Tenant, meter: str, seconds: int, idempotency_key: str, *, at: datetime,
                    order_id: uuid.UUID, reference: str = "") -> bool:
    """Write one duration row (a service order's active seconds) in the ledger; False if its idempotency key
    was written before. No quota applies and a suspended tenant's time still counts: it happened.

    ``at`` is when the metered span began, so the row lands in the hour (and billing period) it belongs to.
    Call it inside the caller's transaction (``services.orders`` moves the order's watermark in the same one)."""
    spec = _meter(meter)
    if not spec.is_duration:
        raise BadRequest(f"{meter!r} is not a duration meter")
    if seconds <= 0:
        return False
    try:
        with transaction.atomic():  # a savepoint: a replay must not abort the caller's transaction
            UsageRecord.objects.create(
                tenant=tenant, meter=meter, kind=UsageRecord.Kind.CONSUME, quantity=seconds, unit=spec.unit,
                reference=reference[:200], idempotency_key=idempotency_key, order_id=order_id, created_at=at)
    except IntegrityError:
        return False
    return True


# -- reserve, then settle -----------------------------------------------------------------------------------
# A request whose backend hands out something scarce (a KME's keys, a QRNG's entropy) holds its quota *before*
# the backend is asked: parallel requests at a tenant's limit then never take more from a pool other tenants
# share than the quota allows. The reservation is counted in the window counters at once (the same conditional
# UPDATE as consume) and recorded as a row; settling deletes the row and writes the ledger row, releasing gives
# the amount back. Counters == ledger + open reservations, always; a reservation left behind by a process that
# died between the two steps is given back by ``expire_reservations``.
RESERVATION_TTL_S = 300


@dataclass(frozen=True)
class Reservation:
    pk: int
    tenant: Tenant
    meter: str
    amount: int
    window_starts: tuple[datetime, ...]
    created_at: datetime


_RES_TABLE = _qn(QuotaReservation._meta.db_table)
_RES_COLUMNS = ", ".join(_qn(QuotaReservation._meta.get_field(f).column)
                         for f in ("tenant", "meter", "amount", "window_starts", "created_at"))
_RESERVATION_INSERT = (f"INSERT INTO {_RES_TABLE} ({_RES_COLUMNS}) VALUES (%s, %s, %s, %s, %s) "  # noqa: S608
                       f"RETURNING {_qn(QuotaReservation._meta.pk.column)}")
_RESERVATION_DELETE = f"DELETE FROM {_RES_TABLE} WHERE {_qn(QuotaReservation._meta.pk.column)} = %s"  # noqa: S608


def _pipeline(statements: list[tuple[str, list]], then: Callable[[], None] | None = None) -> list | None:
    """Run ``statements`` in one transaction in psycopg's pipeline mode (one round trip, then COMMIT); the
    cursors, or None (rolled back, nothing changed) on any database error."""
    import psycopg

    try:
        with transaction.atomic():
            try:
                connection.ensure_connection()
                raw = connection.connection
                with raw.pipeline():
                    cursors = []
                    for sql, params in statements:
                        cursors.append(raw.cursor())
                        cursors[-1].execute(sql, params)
                    if then is not None:
                        then()
                results = [(c.rowcount, c.fetchone() if c.description else None) for c in cursors]
            except (psycopg.Error, DatabaseError) as exc:
                raise _NotTheCommonCase from exc
            if any(rowcount != 1 for rowcount, _ in results):
                raise _NotTheCommonCase
        # An error of the COMMIT itself is not caught: it may have committed, and the general path would then
        # call it a replay ("nothing charged") while it was charged.
    except _NotTheCommonCase:
        return None
    return results


def reserve(tenant: Tenant, meter: str, amount: int) -> Reservation:
    """Hold ``amount`` of ``meter`` in every window before the backend is asked; ``QuotaExceeded`` (with the
    RateLimit headers, nothing held) when it would not fit. ``settle`` or ``release_reservation`` it after."""
    spec = _meter(meter)
    _check_amount(amount)
    if not tenant.is_active:
        raise Forbidden(f"tenant {tenant.slug!r} is suspended")
    now = timezone.now()
    states = meter_states(tenant, meter, now)  # limits and use in one query: refuse the obvious without writing
    for state in states:
        if state.remaining is not None and state.remaining < amount:
            raise _exceeded(state.quota_key, state.limit, state.unit, state.used, amount, states, now)
    limits = {s.quota_key: s.limit for s in states}
    starts = tuple(window_bounds(w, now)[0] for w in spec.windows)
    keys = [quota_key(meter, w) for w in spec.windows]
    row_params = [tenant.pk, meter, amount, json.dumps([s.isoformat() for s in starts]),
                  connection.ops.adapt_datetimefield_value(now)]
    pk = None
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        done = _pipeline([*(_add_statement(tenant, k, s, amount, limits[k]) for k, s in zip(keys, starts, strict=True)),
                          (_RESERVATION_INSERT, row_params)])
        pk = done[-1][1][0] if done else None
    if pk is None:  # the general path: a window's first use, a race at the limit, SQLite
        try:
            with transaction.atomic():
                for key, start in zip(keys, starts, strict=True):
                    if not _add(tenant, key, start, amount, limits[key]):
                        raise _OverLimit(key, limits[key])
                pk = QuotaReservation.objects.create(tenant=tenant, meter=meter, amount=amount, created_at=now,
                                                     window_starts=[s.isoformat() for s in starts]).pk
        except _OverLimit as over:
            states = quota_states(tenant, now, meters=[meter])
            state = next(s for s in states if s.quota_key == over.key)
            raise _exceeded(over.key, over.limit, spec.unit, state.used, amount, states, now) from None
    return Reservation(pk, tenant, meter, amount, starts, now)


def _give_back(reservation: Reservation, amount: int) -> None:
    spec = METERS[reservation.meter]
    for window, start in zip(spec.windows, reservation.window_starts, strict=True):
        QuotaCounter.objects.for_tenant(reservation.tenant).filter(
            quota_key=quota_key(reservation.meter, window), window_start=start, used__gte=amount).update(
            used=F("used") - amount)


def release_reservation(reservation: Reservation) -> bool:
    """Give the whole reservation back (the backend failed, the request was refused); False when it was settled
    or given back already. Idempotent."""
    with transaction.atomic():
        if not QuotaReservation.objects.for_tenant(reservation.tenant).filter(pk=reservation.pk).delete()[0]:
            return False
        _give_back(reservation, reservation.amount)
    return True


def settle(reservation: Reservation, used: int, idempotency_key: str, reference: str = "",
           then: Callable[[UsageRecord], None] | None = None, order_id: uuid.UUID | None = None) -> UsageRecord:
    """Turn the reservation into the ledger row of what was ``used``, in one transaction with ``then(record)``
    (as ``consume``): less than reserved gives the rest back; more (a draw whose exact cost was known only after
    it, such as rejection sampling) adds the excess within the limits or raises ``QuotaExceeded``, nothing
    recorded. A replayed idempotency key gives the whole reservation back and returns the first record
    (``replayed``); a reservation already given back (expired) is consumed anew, which may refuse it."""
    spec = METERS[reservation.meter]
    _check_idempotency_key(idempotency_key)
    _check_amount(used)
    tenant, now = reservation.tenant, timezone.now()
    record = UsageRecord(tenant=tenant, meter=reservation.meter, kind=UsageRecord.Kind.CONSUME, quantity=used,
                         unit=spec.unit, reference=reference[:200], idempotency_key=idempotency_key,
                         order_id=order_id, created_at=now)
    if connection.vendor == "postgresql" and not connection.in_atomic_block and used == reservation.amount:
        done = _pipeline([(_RESERVATION_DELETE, [reservation.pk]),
                          (_LEDGER_INSERT, [tenant.pk, reservation.meter, record.kind, used, spec.unit,
                                            record.reference, idempotency_key, order_id,
                                            connection.ops.adapt_datetimefield_value(now)])],
                         then=None if then is None else lambda: then(record))
        if done is not None:
            record.pk, record.replayed = done[1][1][0], False
            record._state.adding = False
            return record
    try:
        with transaction.atomic():
            if not QuotaReservation.objects.for_tenant(tenant).filter(pk=reservation.pk).delete()[0]:
                raise _Expired
            if used < reservation.amount:
                _give_back(reservation, reservation.amount - used)
            elif used > reservation.amount:
                extra, limits = used - reservation.amount, effective_limits(tenant)
                for window, start in zip(spec.windows, reservation.window_starts, strict=True):
                    key = quota_key(reservation.meter, window)
                    if not _add(tenant, key, start, extra, limits[key]):
                        raise _OverLimit(key, limits[key])
            record.save(force_insert=True)
            record.replayed = False
            if then is not None:
                then(record)
            return record
    except _Expired:
        return consume(tenant, reservation.meter, used, idempotency_key, reference, then=then, order_id=order_id)
    except _OverLimit as over:
        release_reservation(reservation)
        states = quota_states(tenant, now, meters=[reservation.meter])
        state = next(s for s in states if s.quota_key == over.key)
        raise _exceeded(over.key, over.limit, spec.unit, state.used, used, states, now) from None
    except IntegrityError:
        release_reservation(reservation)  # the usage was recorded before: this hold was never needed
        replay = _replayed(tenant, reservation.meter, used, idempotency_key, UsageRecord.Kind.CONSUME)
        if replay is None:
            raise
        return replay


class _Expired(Exception):
    pass


def expire_reservations(max_age_s: float = RESERVATION_TTL_S) -> int:
    """Give back reservations older than ``max_age_s`` (their request died between reserve and settle)."""
    cutoff = timezone.now() - timedelta(seconds=max_age_s)
    stale = QuotaReservation.objects.unscoped().select_related("tenant").filter(created_at__lt=cutoff)
    given = 0
    for row in stale:
        starts = tuple(datetime.fromisoformat(s) for s in row.window_starts)
        given += release_reservation(Reservation(row.pk, row.tenant, row.meter, row.amount, starts, row.created_at))
    return given
