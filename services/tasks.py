"""Celery tasks: thin wrappers around the services app's service functions."""

from celery import shared_task

from . import linkhistory, orders


# Runs every 2 s (beat); a run left queued over 10 s is stale and is dropped, not piled up.
@shared_task(ignore_result=True, expires=10.0)
def maintain_orders() -> dict:
    """The one periodic job of every service order type: expiry (e.g. key streams past their TTL), duration
    metering, and each type's own upkeep (key streams: the backend buffers kept ahead)."""
    return orders.maintain_all()


# Runs every 5 s (beat): the link pages' history.
@shared_task(ignore_result=True, expires=5.0)
def sample_links() -> int:
    return linkhistory.sample()
