"""SAE certificate identities cached in the key gateway's processes, and their invalidation.

Authentication by certificate is a look-up of (serial -> SAE, node, tenant) on every key request. With Redis
(``REDIS_URL``) and ``KEY_GATEWAY_IDENTITY_CACHE`` on (the default), each process keeps those database rows in
memory under a *generation*, a random token in Redis (``qxaas:identity-generation``) read once per look-up: one
GET, cheaper than the query and its conversion. A row is used only while the generation it was read under is
still the current one. Every change that can alter an identity sets a new generation once committed: a
certificate issued, re-issued or revoked (``services.saes``), an SAE, a node or a tenant saved or deleted (a
suspension, a plan change; the signals below). So a revocation stops working on every process at its next
request, the same as without the cache (``tests/faults/test_gateway_faults.py`` measures it on both gateway
processes).

Failure modes, each falling back to the database rather than to a stale identity: Redis unreachable (the
look-up queries, the cache is dropped); Redis restarted and the generation lost (the next look-up sets a new
random one, which no cached row carries); a change whose generation could not be set after its commit (Redis
down at that moment): rows are also never used longer than ``MAX_AGE_S``.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)
GENERATION_KEY = "qxaas:identity-generation"
MAX_AGE_S = 30.0  # the backstop for a change whose new generation never reached Redis
MAX_ENTRIES = 10_000  # certificates the CA verified: a bounded set, but bound the memory anyway

_rows: dict[str, tuple[bytes, float, tuple | None]] = {}  # serial -> (generation, read at, row)


@lru_cache(maxsize=1)
def _redis():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)


def enabled() -> bool:
    return bool(settings.REDIS_URL) and getattr(settings, "KEY_GATEWAY_IDENTITY_CACHE", True)


def changed() -> None:
    """An identity may have changed: a new generation once the current transaction commits (at once in
    autocommit), so every gateway process stops using what it cached."""
    _rows.clear()  # this process's at once (and again after the commit: a look-up may come in between)
    if settings.REDIS_URL:
        transaction.on_commit(_new_generation)


def _new_generation() -> None:
    import redis

    _rows.clear()
    try:
        _redis().set(GENERATION_KEY, uuid.uuid4().hex)
    except redis.RedisError as exc:
        logger.warning("identity cache: a new generation could not be set (%s); cached identities expire "
                       "within %.0f s", type(exc).__name__, MAX_AGE_S)


def _generation() -> bytes | None:
    """The current generation (set if Redis lost it), or None when Redis cannot be asked."""
    import redis

    try:
        client = _redis()
        current = client.get(GENERATION_KEY)
        if current is None:  # never set, or Redis restarted: a new one nobody has cached anything under
            client.set(GENERATION_KEY, uuid.uuid4().hex, nx=True)
            current = client.get(GENERATION_KEY)
        return current
    except redis.RedisError:
        return None


def sae_for_certificate_serial(serial_hex: str | None):
    """``services.saes.sae_for_certificate_serial``, from the cache when its generation is current."""
    from .saes import sae_of_certificate_row, sae_row_for_certificate_serial

    if not serial_hex:
        return None
    if not enabled():
        return sae_of_certificate_row(sae_row_for_certificate_serial(serial_hex))
    generation = _generation()
    if generation is None:
        _rows.clear()
        return sae_of_certificate_row(sae_row_for_certificate_serial(serial_hex))
    now = time.monotonic()
    cached = _rows.get(serial_hex)
    if cached is not None and cached[0] == generation and now - cached[1] < MAX_AGE_S:
        return sae_of_certificate_row(cached[2])
    # Read under the generation asked *before* the query: a change committed after it sets another one.
    row = sae_row_for_certificate_serial(serial_hex)
    if len(_rows) >= MAX_ENTRIES or (cached is not None and cached[0] != generation):
        _rows.clear()  # the old generation's rows are dead weight
    _rows[serial_hex] = (generation, now, row)
    return sae_of_certificate_row(row)


def forget() -> None:
    """Drop this process's cache (tests)."""
    _rows.clear()


def _on_change(sender, **kwargs) -> None:
    changed()


def connect_signals() -> None:
    """A saved or deleted SAE, node or tenant sets a new generation (``ServicesConfig.ready``)."""
    from django.db.models.signals import post_delete, post_save

    from tenants.models import Tenant

    from .models import QkdNode, Sae

    for model in (Sae, QkdNode, Tenant):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"identities.save.{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"identities.delete.{model.__name__}")
