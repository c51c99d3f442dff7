"""Celery tasks: thin wrappers around ``tls.services``."""

from celery import shared_task

from . import services


@shared_task(ignore_result=True)
def provision(session_uuid: str) -> None:
    """Take the session's first QKD key and start its endpoints (requested -> active, or failed)."""
    services.provision(session_uuid)

