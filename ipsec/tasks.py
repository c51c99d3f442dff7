"""Celery tasks: thin wrappers around ``ipsec.services``."""

from celery import shared_task

from . import services


@shared_task(ignore_result=True)
def provision(tunnel_pk: int) -> None:
    services.provision(tunnel_pk)


@shared_task(ignore_result=True)
def rekey(tunnel_pk: int) -> None:
    services.rekey(tunnel_pk)


@shared_task(ignore_result=True)
def close(tunnel_pk: int) -> None:
    services.close(tunnel_pk)


# enqueued by the 2 s maintenance job; a pass left queued over 5 s is stale (the next one is coming)
@shared_task(ignore_result=True, expires=5.0)
def monitor() -> dict:
    return services.monitor()


@shared_task(ignore_result=True)
def reconcile() -> dict:
    return services.reconcile()
