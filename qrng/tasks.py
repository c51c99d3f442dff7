"""Celery tasks: thin wrappers around ``qrng.runtime`` and ``qrng.reports``."""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from portal.reliability import durable_task, redelivered
from qrng import reports, runtime


# Every 2 s (beat); a run left queued longer is stale and dropped rather than piled up.
@shared_task(ignore_result=True, expires=10.0)
def fill_pool() -> dict:
    """Keep the shared Redis entropy pool topped up (a no-op for a per-process local pool)."""
    return runtime.fill_pool()


@durable_task(bind=True)
def run_quality_report(self, report_id: str) -> str:
    # Delivered again after its worker died: the dead run's RUNNING report is taken over, not skipped.
    try:
        return reports.run_report(report_id, take_over=redelivered(self))
    except SoftTimeLimitExceeded:  # acknowledged as failed: the report must not stay "running" for ever
        return reports.fail_report(report_id, "the report ran past the task time limit")
