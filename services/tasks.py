"""Celery tasks: thin wrappers around the services app's service functions."""

from celery import shared_task

from . import streams


# Runs every 2 s (beat); a run left queued over 10 s is stale and is dropped, not piled up.
@shared_task(ignore_result=True, expires=10.0)
def maintain_key_streams() -> dict[str, int]:
    """Expire ETSI 004 key streams past their TTL, then keep the live ones' backend buffers ahead."""
    return {"expired": streams.expire_streams(), "prefetched": streams.fill_streams()}
