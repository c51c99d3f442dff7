"""Celery tasks: thin wrappers around the tenants services."""

from celery import shared_task

from . import rollup, tokens


@shared_task
def expire_api_tokens() -> int:
    return tokens.expire_tokens()


@shared_task
def rollup_usage() -> int:
    return rollup.rollup_usage()
