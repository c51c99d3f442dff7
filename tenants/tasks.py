"""Celery tasks: thin wrappers around the tenants services."""

from celery import shared_task

from . import quota, rollup, tokens


@shared_task
def expire_api_tokens() -> int:
    return tokens.expire_tokens()


@shared_task
def rollup_usage() -> int:
    return rollup.rollup_usage()


@shared_task(ignore_result=True, expires=60.0)
def expire_quota_reservations() -> int:
    """Give back quota held by requests whose process died between reserve and settle."""
    return quota.expire_reservations()
