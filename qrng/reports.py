"""Quality reports: start one for a tenant (a Celery job), run it, keep its progress and result.

A report draws N bytes from the pool or one pinned source and runs ``qrng.quality`` on them; the bytes are
tested and dropped, so nothing is delivered to the tenant and nothing is charged to ``entropy_bytes``
(which counts entropy delivered). What bounds the cost instead: at most 16 MiB per report, one active
report per tenant, and the per-token request rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from portal.errors import BadRequest, Conflict
from qrng import quality, runtime
from qrng.delivery import as_api_error
from qrng.models import QualityReport
from qrng.sources import EntropySourceError
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


def run_report(report_id: str) -> str:
    """The job: draw, test, record progress and the result (p-values and statistics only)."""
    rows = QualityReport.objects.unscoped().filter(pk=report_id, state=QualityReport.State.QUEUED)
    if rows.update(state=QualityReport.State.RUNNING, started_at=timezone.now(), stage="drawing") == 0:
        return "not queued"  # already picked up (a redelivered task) or gone
    report = QualityReport.objects.unscoped().get(pk=report_id)
    this = QualityReport.objects.unscoped().filter(pk=report_id)

    def progress(fraction: float, stage: str) -> None:
        this.update(progress=round(fraction, 4), stage=stage[:100])

    try:
        result = runtime.get_service().quality_report(report.n_bytes, report.source or None, progress)
    except (EntropySourceError, ValueError) as exc:
        log.warning("quality report %s failed: %s", report_id, exc)
        this.update(state=QualityReport.State.FAILED, error=str(exc)[:500], finished_at=timezone.now())
        return QualityReport.State.FAILED
    this.update(state=QualityReport.State.DONE, result=result, progress=1.0, stage="done",
                finished_at=timezone.now())
    return QualityReport.State.DONE
