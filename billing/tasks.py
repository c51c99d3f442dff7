"""Thin Celery wrappers over billing's services (scheduled in settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from . import invoices, thresholds, webhooks


@shared_task(ignore_result=True)
def close_periods() -> int:
    return len(invoices.close_due())


@shared_task(ignore_result=True)
def refresh_drafts() -> int:
    return invoices.refresh_drafts()


@shared_task(ignore_result=True)
def check_quota_thresholds() -> int:
    return len(thresholds.check_thresholds())


@shared_task(bind=True, ignore_result=True)
def deliver_webhook(self, delivery_id: int) -> str | None:
    """One attempt; a failure schedules the next one after its backoff (the sweep is the safety net)."""
    delivery = webhooks.attempt(delivery_id)
    if delivery is not None and delivery.status == delivery.Status.PENDING:
        self.apply_async((delivery_id,), countdown=webhooks.backoff(delivery.attempts).total_seconds())
    return delivery.status if delivery else None


@shared_task(ignore_result=True)
def retry_webhooks() -> int:
    ids = webhooks.due()
    for pk in ids:
        deliver_webhook.delay(pk)
    return len(ids)
