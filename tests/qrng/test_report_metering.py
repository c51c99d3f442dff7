"""Issue 13, finding 6: quality reports draw up to 16 MiB from the pool every tenant shares, so they are metered
on ``entropy_bytes`` (checked at the start, reserved before the draw, settled with exactly what was drawn) and
run on their own Celery queue, served by their own worker in ``make run`` and deploy/systemd."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from portal import runstack
from portal.celery_app import app
from qrng import reports
from qrng.models import QualityReport
from tenants import quota
from tenants.models import QuotaReservation
from tenants.services import set_quota_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(make_entropy_lab):
    return make_entropy_lab("lab")


def used(tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == "entropy_bytes.day")


@pytest.mark.django_db
def test_a_report_that_would_not_fit_the_quota_is_refused_at_once_and_nothing_is_queued(lab, use_sources,
                                                                                        random_file):
    path, _ = random_file(1 << 20)
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    set_quota_overrides(lab.tenant, {"entropy_bytes.day": 200_000})
    queued = []
    refused = lab.client.post("/api/entropy/quality-reports/", {"bytes": 250_000}, format="json")
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"]["code"] == "quota_exceeded" and "RateLimit" in refused
    assert QualityReport.objects.unscoped().count() == 0 and lab.ledger() == [] and queued == []
    # One that fits is queued; the bytes are held only once its job runs.
    report = reports.start_report(lab.tenant, 125_000, enqueue=queued.append)
    assert report.state == QualityReport.State.QUEUED and used(lab.tenant) == 0


@pytest.mark.django_db
def test_the_job_charges_exactly_the_bytes_it_drew(lab, use_sources, random_file):
    path, _ = random_file(1 << 20)
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    report = reports.start_report(lab.tenant, 300_000, enqueue=lambda _id: None)
    assert reports.run_report(str(report.pk)) == QualityReport.State.DONE
    # Two whole 10^6-bit sequences (the remainder is never drawn): 250 000 bytes, one ledger row.
    assert [(r.quantity, r.idempotency_key) for r in lab.ledger()] == [(250_000, f"quality-report:{report.pk}")]
    assert used(lab.tenant) == 250_000
    assert not QuotaReservation.objects.for_tenant(lab.tenant).exists()  # the hold is gone


@pytest.mark.django_db
def test_a_report_whose_source_runs_dry_is_charged_what_it_drew_and_one_with_no_quota_left_draws_nothing(
        lab, use_sources, random_file):
    path, _ = random_file(300_000)  # enough for two sequences of the three asked for
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    report = reports.start_report(lab.tenant, 375_000, "qrng", enqueue=lambda _id: None)
    assert reports.run_report(str(report.pk)) == QualityReport.State.FAILED
    failed = QualityReport.objects.unscoped().get(pk=report.pk)
    assert "end of data" in failed.error
    assert lab.charged() == used(lab.tenant) == 250_000  # the two sequences that left the source
    assert not QuotaReservation.objects.for_tenant(lab.tenant).exists()

    # The quota was used up between the start and the job: the job fails with the reason, draws nothing.
    later = reports.start_report(lab.tenant, 125_000, "qrng", enqueue=lambda _id: None)
    set_quota_overrides(lab.tenant, {"entropy_bytes.day": 260_000})
    assert reports.run_report(str(later.pk)) == QualityReport.State.FAILED
    assert "exceeded" in QualityReport.objects.unscoped().get(pk=later.pk).error
    assert lab.charged() == used(lab.tenant) == 250_000
    assert not QuotaReservation.objects.for_tenant(lab.tenant).exists()


@pytest.mark.django_db
def test_a_redelivered_report_is_charged_once(lab, use_sources, random_file):
    path, _ = random_file(1 << 20)
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    report = reports.start_report(lab.tenant, 125_000, enqueue=lambda _id: None)
    assert reports.run_report(str(report.pk)) == QualityReport.State.DONE
    # The broker delivers it again (its worker died after the job's commit): the run is taken over and its
    # draw is a replay of the same ledger row, not a second charge.
    QualityReport.objects.unscoped().filter(pk=report.pk).update(state=QualityReport.State.RUNNING)
    assert reports.run_report(str(report.pk), take_over=True) == QualityReport.State.DONE
    assert lab.charged() == used(lab.tenant) == 125_000 and len(lab.ledger()) == 1
    assert not QuotaReservation.objects.for_tenant(lab.tenant).exists()


def test_reports_run_on_their_own_queue_and_make_run_and_systemd_serve_it():
    route = app.amqp.router.route({}, "qrng.tasks.run_quality_report")
    assert route["queue"].name == settings.QRNG_QUALITY_QUEUE == "quality"
    assert app.amqp.router.route({}, "services.tasks.maintain_orders")["queue"].name == "celery"
    commands = runstack.commands(8000)
    main, reports_worker = commands["worker"], commands["worker-quality"]
    assert main[main.index("-Q") + 1] == "celery"  # reports never take the default queue's processes
    assert reports_worker[reports_worker.index("-Q") + 1] == "quality"
    units = ROOT / "deploy" / "systemd"
    assert " -Q celery " in (units / "qxaas-worker.service").read_text()
    assert " -Q quality " in (units / "qxaas-worker-quality.service").read_text()
    assert "qxaas-worker-quality.service" in (units / "qxaas.target").read_text()
    assert "quality" in settings.METRICS_CELERY_QUEUES  # its backlog is on /metrics too
