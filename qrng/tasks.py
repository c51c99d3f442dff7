"""Celery tasks: thin wrappers around ``qrng.runtime`` and ``qrng.reports``."""

from celery import shared_task

from qrng import reports, runtime


# Every 2 s (beat); a run left queued longer is stale and dropped rather than piled up.
@shared_task(ignore_result=True, expires=10.0)
def fill_pool() -> dict:
    """Keep the shared Redis entropy pool topped up (a no-op for a per-process local pool)."""
    return runtime.fill_pool()


@shared_task(ignore_result=True)
def run_quality_report(report_id: str) -> str:
    return reports.run_report(report_id)
