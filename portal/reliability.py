"""Work that survives a crash: the one pattern for Celery tasks that provision, maintain or bill.

The settings (``portal.settings.base``: ``CELERY_TASK_ACKS_LATE``, ``CELERY_TASK_REJECT_ON_WORKER_LOST``, the
Redis visibility timeout) make the broker deliver a task again when the worker running it dies. So every task
may run twice (or more), possibly concurrently with the rest of a crashed first run's effects, and must apply
its effects once:

- claim the work with a conditional UPDATE (``services.orders.advance(order, to, expected=...)``, or
  ``Model.objects.filter(pk=..., state=...).update(...)``): the run that loses the claim does nothing;
- meter with an idempotency key (``tenants.quota.consume(..., idempotency_key)``): a replay adds no ledger row;
- make remote effects idempotent by name (a strongSwan connection named after the order, loaded again, is the
  same connection) or check before acting;
- a run that finds its work half-done by a dead run (``redelivered(task)``) takes it over rather than skip it.

New tasks use ``@durable_task`` (a ``shared_task`` with those options spelled out, plus retries with backoff
while PostgreSQL, Redis or a backend is briefly away). Periodic jobs that run every few seconds anyway keep a
plain ``shared_task(expires=...)``: the next run is the retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from portal.errors import ServiceUnavailable

# Errors that mean "a dependency is briefly away": retried with backoff, never recorded as the task's failure.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError, ServiceUnavailable)


def durable_task(*args: Any, **options: Any) -> Callable:
    """``@durable_task`` / ``@durable_task(bind=True, ...)``: a Celery task delivered again if its worker dies
    and retried (exponential backoff up to a minute, 10 times) on transient errors. Its body must be idempotent
    (see the module docstring)."""
    options.setdefault("acks_late", True)
    options.setdefault("reject_on_worker_lost", True)
    options.setdefault("autoretry_for", TRANSIENT_ERRORS)
    options.setdefault("retry_backoff", 2)
    options.setdefault("retry_backoff_max", 60)
    options.setdefault("retry_jitter", True)
    options.setdefault("max_retries", 10)
    options.setdefault("ignore_result", True)
    if len(args) == 1 and callable(args[0]):
        return shared_task(**options)(args[0])
    return shared_task(*args, **options)


def redelivered(task: Any) -> bool:
    """True when the broker delivers this task again because an earlier run did not finish (its worker died)."""
    info = getattr(task.request, "delivery_info", None) or {}
    return bool(info.get("redelivered"))
