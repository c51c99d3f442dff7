"""SAE certificate identities cached in the key gateway's processes, and their invalidation.

Authentication by certificate is a look-up of (serial -> SAE, node, tenant) on every key request
(``services.saes.cached_sae_for_certificate_serial`` -> ``row``). With Redis
(``REDIS_URL``) and ``KEY_GATEWAY_IDENTITY_CACHE`` on (the default), each process keeps those database rows in
memory, and a thread of the process listens on a Redis channel (``qxaas:identities-changed``). Every change that
can alter an identity is announced on it once committed: a certificate issued, re-issued or revoked
(``services.saes``), an SAE, a node or a tenant saved or deleted (a suspension, a plan change; the signals
below). Each process drops its whole cache when the announcement arrives (milliseconds after the commit), so a
revocation stops working on every process at once; ``tests/faults/test_gateway_faults.py`` measures it on both
gateway processes of a running stack. A hit costs no round trip at all (a per-request Redis ``GET`` of a version
counter was tried first: it cost as much as the query it saved).

The cache is used only while the listener is subscribed: before it is, while Redis is unreachable, and after a
lost connection the look-up goes to the database, and the cache is emptied again when the listener subscribes
(announcements it may have missed). A row read while an announcement arrived is not kept (``_epoch``). An
announcement that could not be sent (Redis down at that moment, when the listeners are not subscribed either,
or a partition between the portal's processes and Redis) is covered by an age limit: no row is used longer
than ``MAX_AGE_S``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)
CHANNEL = "qxaas:identities-changed"
MAX_AGE_S = 30.0  # the backstop for an announcement that never reached a process
MAX_ENTRIES = 10_000  # certificates the CA verified: a bounded set, but bound the memory anyway
RECONNECT_S = 1.0
HEALTH_CHECK_S = 5  # the listener pings Redis this often, so a silently dead connection is noticed

_lock = threading.Lock()
_rows: dict[str, tuple[float, tuple | None]] = {}  # serial -> (read at, row)
_epoch = 0  # incremented by every invalidation: a row read across one is not kept
_live = threading.Event()  # the listener is subscribed: the cache may be used
_listener_pid: int | None = None


@lru_cache(maxsize=1)
def _redis():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)


def enabled() -> bool:
    return bool(settings.REDIS_URL) and getattr(settings, "KEY_GATEWAY_IDENTITY_CACHE", True)


def invalidate() -> None:
    """Drop this process's cached identities."""
    global _epoch
    with _lock:
        _epoch += 1
        _rows.clear()


def changed() -> None:
    """An identity may have changed: announced to every process once the current transaction commits (at once
    in autocommit); this process's cache goes at once too."""
    invalidate()
    if settings.REDIS_URL:
        transaction.on_commit(_announce)


def _announce() -> None:
    import redis

    invalidate()
    try:
        _redis().publish(CHANNEL, b"changed")
    except redis.RedisError as exc:
        logger.warning("identity cache: the change could not be announced (%s); cached identities expire "
                       "within %.0f s", type(exc).__name__, MAX_AGE_S)


def _listen() -> None:
    """The process's listener thread: subscribed -> live; any announcement or lost connection -> invalidate."""
    import redis

    while True:
        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1.0, socket_timeout=None,
                                          health_check_interval=HEALTH_CHECK_S)
            pubsub = client.pubsub()
            pubsub.subscribe(CHANNEL)
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                invalidate()  # an announcement, or the subscription itself: whatever was missed before it
                if message["type"] == "subscribe":
                    _live.set()
        except Exception as exc:  # any failure: no cache until subscribed again
            if _live.is_set():
                logger.warning("identity cache: the change channel was lost (%s); looking identities up in the "
                               "database until it is back", type(exc).__name__)
        finally:
            _live.clear()
            invalidate()
        time.sleep(RECONNECT_S)


def live() -> bool:
    """The cache may be used in this process (its listener subscribed); starts the listener on first use."""
    global _listener_pid
    if _listener_pid != os.getpid():  # first use in this process (a forked child has no thread of its parent's)
        with _lock:
            if _listener_pid != os.getpid():
                _live.clear()
                threading.Thread(target=_listen, name="identity-cache", daemon=True).start()
                _listener_pid = os.getpid()
    return _live.is_set()


def row(serial_hex: str, load: Callable[[str], tuple | None]) -> tuple | None:
    """The identity row of a certificate serial: from the cache when the listener vouches for it, else
    ``load(serial_hex)`` (a database query; ``services.saes.cached_sae_for_certificate_serial``)."""
    if not enabled() or not live():
        return load(serial_hex)
    now = time.monotonic()
    with _lock:
        epoch, cached = _epoch, _rows.get(serial_hex)
    if cached is not None and now - cached[0] < MAX_AGE_S:
        return cached[1]
    found = load(serial_hex)
    with _lock:
        if _epoch == epoch and _live.is_set():  # no change announced while it was read
            if len(_rows) >= MAX_ENTRIES:
                _rows.clear()
            _rows[serial_hex] = (now, found)
    return found


def _on_change(sender, **kwargs) -> None:
    changed()


def connect_signals() -> None:
    """A saved or deleted SAE, node or tenant is announced (``ServicesConfig.ready``)."""
    from django.db.models.signals import post_delete, post_save

    from tenants.models import Tenant

    from .models import QkdNode, Sae

    for model in (Sae, QkdNode, Tenant):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"identities.save.{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"identities.delete.{model.__name__}")
