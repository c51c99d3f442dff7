"""Quality reports: start one for a tenant (a Celery job), run it, keep its progress and result.

A report draws N bytes from the pool or one pinned source and runs ``qrng.quality`` on them; the bytes are
tested and dropped, never delivered or stored, but they are taken out of the pool that every tenant shares,
so they are metered on ``entropy_bytes`` like any draw (docs/qrng.md, "Quality reports"):

- starting a report checks the quota for N bytes (429 at once, nothing queued or recorded, when it would not
  fit);
- the job reserves N bytes before it draws (``tenants.quota.reserve``; the report fails with the reason,
  nothing drawn, when the quota was used up meanwhile), then settles exactly the bytes it drew: N rounded down
  to whole 10^6-bit sequences, or what it drew before a source failed; nothing drawn, nothing charged. One
  ledger row per report, idempotency key ``quality-report:<id>``.

Besides the quota: at most 16 MiB per report, one active report per tenant, the per-token request rate, and
the job runs on its own Celery queue (``quality``, ``CELERY_TASK_ROUTES``) served by its own worker, so reports
never hold up the workers that provision tunnels, fill key streams and expire orders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from portal.errors import ApiError, BadRequest, Conflict
from qrng import quality, runtime
from qrng.delivery import METER, as_api_error
from qrng.models import QualityReport
from qrng.sources import EntropySourceError
from tenants import quota
from tenants.models import Tenant

log = logging.getLogger(__name__)

MIN_REPORT_BYTES = quality.MIN_BITS // 8 + 1


def start_report(tenant: Tenant, n_bytes: int, source: str = "", user=None, *,
                 enqueue: Callable[[str], object]) -> QualityReport:
    """Queue a report (400 for a bad size or unknown source, 409 while another of the tenant's is active);
    ``enqueue(report_id)`` after the commit starts the job (``qrng.tasks.run_quality_report.delay``: passed in,
    because the tasks module wraps this one)."""
    if not MIN_REPORT_BYTES <= n_bytes <= quality.MAX_REPORT_BYTES:
        raise BadRequest(f"bytes must be in [{MIN_REPORT_BYTES}, {quality.MAX_REPORT_BYTES}]")
    if source:
        try:
            runtime.get_service().sources.get(source)
        except EntropySourceError as exc:
            raise as_api_error(exc) from exc
    quota.check(tenant, METER, n_bytes)  # 429 now rather than a failed report later; records nothing
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one report start at a time per tenant
        active = QualityReport.objects.for_tenant(tenant).filter(
            state__in=[QualityReport.State.QUEUED, QualityReport.State.RUNNING]).first()
        if active is not None:
            raise Conflict("a quality report of this tenant is still running; wait for it to finish",
                           details={"report": str(active.id)})
        report = QualityReport.objects.create(tenant=tenant, requested_by=user, n_bytes=n_bytes, source=source)
        transaction.on_commit(lambda: enqueue(str(report.id)))
    return report


def run_report(report_id: str, *, take_over: bool = False) -> str:
    """The job: draw, test, record progress and the result (p-values and statistics only).

    Claimed by a conditional UPDATE from QUEUED, so two deliveries of one job run it once; ``take_over`` (the
    broker delivered the job again because the worker running it died) also claims a RUNNING report, whose
    run is dead. The result is written once, by whichever run finishes."""
    claimable = [QualityReport.State.QUEUED, *([QualityReport.State.RUNNING] if take_over else [])]
    rows = QualityReport.objects.unscoped().filter(pk=report_id, state__in=claimable)
    if rows.update(state=QualityReport.State.RUNNING, started_at=timezone.now(), stage="drawing") == 0:
        return "not queued"  # already picked up (a redelivered task) or gone
    report = QualityReport.objects.unscoped().select_related("tenant__plan").get(pk=report_id)
    this = QualityReport.objects.unscoped().filter(pk=report_id)

    def progress(fraction: float, stage: str) -> None:
        this.update(progress=round(fraction, 4), stage=stage[:100])

    try:
        reservation = quota.reserve(report.tenant, METER, report.n_bytes)  # held before anything is drawn
    except ApiError as exc:  # the quota was used up since the start (429), or the tenant suspended (403)
        this.update(state=QualityReport.State.FAILED, error=exc.message[:500], finished_at=timezone.now())
        return QualityReport.State.FAILED
    drawn = [0]
    try:
        result = runtime.get_service().quality_report(report.n_bytes, report.source or None, progress,
                                                      on_read=lambda n: drawn.__setitem__(0, drawn[0] + n))
    except (EntropySourceError, ValueError) as exc:
        log.warning("quality report %s failed: %s", report_id, exc)
        this.update(state=QualityReport.State.FAILED, error=str(exc)[:500], finished_at=timezone.now())
        return QualityReport.State.FAILED
    finally:  # also when the job is stopped (its time limit): what left the pool is charged
        _settle(report, reservation, drawn[0])
    this.filter(state=QualityReport.State.RUNNING).update(
        state=QualityReport.State.DONE, result=result, progress=1.0, stage="done", finished_at=timezone.now())
    return QualityReport.State.DONE


def _settle(report: QualityReport, reservation: quota.Reservation, drawn: int) -> None:
    """Charge the bytes the report drew (once per report), give the rest of the hold back."""
    if drawn <= 0:
        quota.release_reservation(reservation)
        return
    try:
        quota.settle(reservation, drawn, f"quality-report:{report.id}",
                     f"quality report {report.id}: {drawn} bytes drawn and tested")
    except ApiError as exc:  # the hold had expired and the quota is full now: the ledger stays exact
        log.warning("quality report %s: its %d bytes could not be charged: %s", report.id, drawn, exc.message)
    finally:
        quota.release_reservation(reservation)  # a no-op once settled


def fail_report(report_id: str, error: str) -> str:
    """Mark a running report failed (its job gave up); a report finished meanwhile is left alone."""
    QualityReport.objects.unscoped().filter(pk=report_id, state=QualityReport.State.RUNNING).update(
        state=QualityReport.State.FAILED, error=error[:500], finished_at=timezone.now())
    return QualityReport.State.FAILED
