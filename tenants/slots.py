"""Per-tenant concurrency slots for requests that hold a web worker thread for long.

The web listener has a fixed number of threads (``make run``: 2 gunicorn workers x 4 threads). A request that
waits (an ETSI 004 ``get_key`` for a chunk not yet due) or streams for long (a raw entropy download to a slow
reader) occupies one of them for its whole length, so one tenant's slow clients could take them all. Such a
request first takes one of its tenant's slots of that kind; with none free it is answered at once (a 429, or an
ETSI 004 "not yet available"), and the other tenants' requests keep their threads.

Slots are shared by every web process through Redis when ``REDIS_URL`` is set (a sorted set per tenant and kind,
one Lua script per acquire), per process otherwise (the embedded default). A slot whose process died without
giving it back lapses after ``hold_s`` seconds since it was taken or last ``refresh``-ed. If Redis cannot be
reached the request goes ahead without a slot (logged): a Redis restart must not stop the service
(docs/reliability.md); the web listener's thread count still bounds the harm.

Like ``tenants.ratelimit`` this module never touches the database.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 1.0  # a slot decision must never wait on a stuck Redis longer than this


class LocalSlots:
    """Thread-safe in-process slots (the embedded default)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}  # key -> {token: expiry (monotonic)}

    def acquire(self, key: str, token: str, limit: int, hold_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            held = {t: exp for t, exp in self._held.get(key, {}).items() if exp > now}
            if len(held) >= limit:
                self._held[key] = held
                return False
            held[token] = now + hold_s
            self._held[key] = held
            return True

    def refresh(self, key: str, token: str, hold_s: float) -> None:
        with self._lock:
            if token in self._held.get(key, {}):
                self._held[key][token] = time.monotonic() + hold_s

    def release(self, key: str, token: str) -> None:
        with self._lock:
            self._held.get(key, {}).pop(token, None)


# KEYS[1] the tenant's slots of one kind (a sorted set: token -> expiry); ARGV limit, token, now, expiry (s).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[3])) + 1)
return 1
"""


class RedisSlots:
    """Slots shared by every web process of the deployment."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                            socket_connect_timeout=REDIS_TIMEOUT_S)
        self._acquire = self._client.register_script(_ACQUIRE)

    def acquire(self, key: str, token: str, limit: int, hold_s: float) -> bool:
        now = time.time()
        return bool(self._acquire(keys=[key], args=[limit, token, now, now + hold_s]))

    def refresh(self, key: str, token: str, hold_s: float) -> None:
        self._client.zadd(key, {token: time.time() + hold_s}, xx=True)

    def release(self, key: str, token: str) -> None:
        self._client.zrem(key, token)


@lru_cache(maxsize=1)
def backend() -> LocalSlots | RedisSlots:
    return RedisSlots(settings.REDIS_URL) if settings.REDIS_URL else LocalSlots()


@dataclass
class Slot:
    """One slot held; ``release`` it when the long request ends (idempotent)."""

    key: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    hold_s: float = 60.0
    held: bool = True

    def refresh(self) -> None:
        """The request is still going: keep the slot another ``hold_s`` seconds."""
        if self.held:
            _guarded("refresh", backend().refresh, self.key, self.token, self.hold_s)

    def release(self) -> None:
        if self.held:
            self.held = False
            _guarded("release", backend().release, self.key, self.token)


def _guarded(what: str, call, *args):
    try:
        return call(*args)
    except Exception as exc:  # Redis away: never fail the request for it (see the module's docstring)
        log.warning("tenant slots: cannot %s (%s); going on without", what, type(exc).__name__)
        return None


def acquire(kind: str, tenant_id: object, limit: int, hold_s: float) -> Slot | None:
    """One of the tenant's ``limit`` slots of ``kind`` for up to ``hold_s`` seconds (refreshable), or None when
    they are all taken. ``limit`` <= 0 means no limit (a slot that holds nothing)."""
    key = f"qxaas:slots:{kind}:{tenant_id}"
    if limit <= 0:
        return Slot(key, hold_s=hold_s, held=False)
    slot = Slot(key, hold_s=hold_s)
    taken = _guarded("acquire", backend().acquire, key, slot.token, limit, hold_s)
    if taken is None:  # Redis away: go ahead, holding nothing
        slot.held = False
        return slot
    return slot if taken else None
