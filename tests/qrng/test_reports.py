"""Quality reports (API, job, web page), the pool-filling task, alarms on the Entropy page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from portal.celery_app import app
from qrng import runtime
from qrng.models import QualityReport
from qrng.tasks import fill_pool
from tests.conftest import uses_postgres

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def eager():
    """Run Celery tasks in-process (the real-worker test below covers the broker path)."""
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def lab(make_entropy_lab):
    return make_entropy_lab("lab")


@pytest.fixture
def file_source(use_sources, random_file):
    path, data = random_file(4 << 20)
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    return data


@pytest.mark.django_db
def test_a_report_runs_as_a_job_and_keeps_p_values_never_bytes(lab, file_source, eager,
                                                               django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = lab.client.post("/api/entropy/quality-reports/", {"bytes": 250_000}, format="json")
    assert response.status_code == 202 and response.json()["state"] == "queued"
    report = lab.get(f"/api/entropy/quality-reports/{response.json()['id']}/").json()
    assert report["state"] == "done" and report["progress"] == 1.0
    result = report["result"]
    assert result["sequences"] == 2 and result["bytes"] == 250_000
    names = {t["name"] for t in result["tests"]}
    assert {"frequency", "runs", "dft_spectral", "cumulative_sums"} <= names
    assert all(0.0 <= p <= 1.0 for t in result["tests"] for p in t.get("p_values", []))
    assert result["passed"] is True  # seeded random bytes pass the battery
    assert result["provenance"]["sources"][0]["source"] == "qrng"
    # No sequence of the tested bytes is kept anywhere in the stored report.
    stored = json.dumps(QualityReport.objects.unscoped().get().result)
    for offset in range(0, 250_000, 25_000):
        sample = file_source[offset : offset + 8]
        assert sample.hex() not in stored and str(list(sample)) not in stored
    assert lab.ledger() == []  # tested and dropped, not delivered: not charged as entropy
    svg = lab.get(f"/api/entropy/quality-reports/{report['id']}/plot.svg")
    assert svg["Content-Type"] == "image/svg+xml" and b"<svg" in svg.content and b"frequency" in svg.content


@pytest.mark.django_db
def test_report_requests_are_validated_and_one_runs_at_a_time(lab, file_source):
    post = lab.client.post
    assert post("/api/entropy/quality-reports/", {"bytes": 5}, format="json").status_code == 400
    assert post("/api/entropy/quality-reports/", {"bytes": 17 << 20}, format="json").status_code == 400
    unknown = post("/api/entropy/quality-reports/", {"bytes": 1000, "source": "nope"}, format="json")
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]["message"]
    first = post("/api/entropy/quality-reports/", {"bytes": 1000}, format="json")
    assert first.status_code == 202  # no worker here: it stays queued
    second = post("/api/entropy/quality-reports/", {"bytes": 1000}, format="json")
    assert second.status_code == 409 and second.json()["error"]["details"]["report"] == first.json()["id"]


@pytest.mark.django_db
def test_reports_are_tenant_scoped(make_entropy_lab, file_source):
    a, b = make_entropy_lab("alpha"), make_entropy_lab("bravo")
    made = a.client.post("/api/entropy/quality-reports/", {"bytes": 1000}, format="json").json()
    assert b.get(f"/api/entropy/quality-reports/{made['id']}/").status_code == 404
    assert b.get("/api/entropy/quality-reports/").json()["results"] == []
    assert [r["id"] for r in a.get("/api/entropy/quality-reports/").json()["results"]] == [made["id"]]


@pytest.mark.django_db
def test_a_report_on_a_failing_source_fails_with_the_reason(lab, use_sources, tmp_path, eager,
                                                            django_capture_on_commit_callbacks):
    use_sources([{"name": "gone", "kind": "device", "path": str(tmp_path / "missing")}])
    with django_capture_on_commit_callbacks(execute=True):
        made = lab.client.post("/api/entropy/quality-reports/", {"bytes": 1000}, format="json").json()
    report = lab.get(f"/api/entropy/quality-reports/{made['id']}/").json()
    assert report["state"] == "failed" and "cannot be opened" in report["error"] and report["result"] is None


# -- web pages -------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_entropy_page_shows_sources_health_curl_examples_and_runs_a_report(lab, file_source, eager,
                                                                           django_capture_on_commit_callbacks):
    from django.test import Client

    browser = Client()
    browser.force_login(lab.owner)
    page = browser.get("/entropy/")
    html = page.content.decode()
    assert page.status_code == 200 and re.search(r'<a href="/entropy/"[^>]*>Entropy</a>', html), html[:1500]  # nav
    assert "<code>qrng</code>" in html and "healthy" in html and "RCT 7, APT 26/512" in html
    assert "TOKEN=&#x27;qx_&lt;key&gt;.&lt;secret&gt;&#x27;" in html or "TOKEN='qx_&lt;key&gt;.&lt;secret&gt;'" in html
    assert "/api/entropy?bytes=1048576&amp;format=raw&#x27; -o entropy.bin" in html or \
        "/api/entropy?bytes=1048576&amp;format=raw' -o entropy.bin" in html
    assert '<span class="tag">simulated</span>' not in html and "Simulated source" not in html  # a device
    with django_capture_on_commit_callbacks(execute=True):
        started = browser.post("/entropy/", {"bytes": "125000", "source": "qrng"})
    assert started.status_code == 302
    report = browser.get(started["Location"]).content.decode()
    assert "<svg" in report and "frequency" in report and "tests passed" in report


@pytest.mark.django_db
def test_entropy_page_labels_the_twin_simulated_and_shows_alarms(lab, use_sources, random_file, settings, tmp_path):
    from django.test import Client

    path, data = random_file(64 << 10)
    with open(path, "wb") as f:
        f.write(b"\x55" * len(data))
    use_sources([{"name": "stuck", "kind": "device", "path": path}])
    assert lab.get("/api/entropy?format=hex").status_code == 503
    browser = Client()
    browser.force_login(lab.owner)
    html = browser.get("/entropy/").content.decode()
    assert "Entropy is unavailable now" in html and "repetition-count test failed" in html
    settings.QRNG_SOURCES = ""
    settings.QKD_TWIN_STATE_DIR = str(tmp_path / "no-twin")
    html = browser.get("/entropy/").content.decode()
    assert "twin" in html and "not running" in html


@pytest.mark.django_db
def test_entropy_page_labels_the_twin_source_simulated(lab, use_sources, settings, tmp_path, qrng_twin):
    from django.test import Client

    state = tmp_path / "twin"
    state.mkdir()
    (state / "endpoints.json").write_text(json.dumps({
        "ca": qrng_twin["ca"], "nodes": {"CAIT": {"url": qrng_twin["url"]}},
        "portal": {"cert": qrng_twin["client_cert"], "key": qrng_twin["client_key"]},
    }))
    settings.QRNG_SOURCES = ""
    settings.QKD_TWIN_STATE_DIR = str(state)
    browser = Client()
    browser.force_login(lab.owner)
    html = browser.get("/entropy/").content.decode()
    assert '<code>twin</code> <span class="tag">simulated</span>' in html and "Simulated source" in html
    assert "not quantum" in html and "healthy" in html


# -- the pool-filling task ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_fill_pool_fills_a_shared_redis_pool_or_says_why_not(lab, file_source, settings):
    result = fill_pool()
    pool = runtime.get_service().pool
    if settings.REDIS_URL:
        assert result["added"] > 0 and pool.level() == result["level"] > 0
        assert pool.describe()["backend"] == "RedisBackend"
        # Requests are then served from the pool, still the source's health-tested stream, once.
        got = bytes.fromhex(lab.get("/api/entropy?format=hex&bytes=100").json()["data"])
        assert file_source.find(got) >= 1024 and pool.level() == result["level"] - 100
    else:
        assert result["added"] == 0 and "local pool" in result["skipped"]
        assert pool.describe()["backend"] == "LocalBackend"


# -- a real Celery worker --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not (uses_postgres() and os.environ.get("REDIS_URL")), reason="needs PostgreSQL and Redis")
def test_a_worker_process_runs_the_quality_report_and_fills_the_pool(lab, use_sources, settings, tmp_path):
    sources = [{"name": "urandom", "kind": "device", "path": "/dev/urandom"}]
    use_sources(sources)
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}",
           "DJANGO_SETTINGS_MODULE": "portal.settings.base", "QXAAS_VAR_DIR": str(tmp_path),
           "QRNG_SOURCES": json.dumps(sources), "QRNG_POOL_KEY": settings.QRNG_POOL_KEY}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        made = lab.client.post("/api/entropy/quality-reports/", {"bytes": 375_000}, format="json").json()
        fill_pool.apply_async(expires=120)  # beat's 10 s expiry is for a running worker; this one may still boot
        deadline = time.monotonic() + 90
        report = {}
        while time.monotonic() < deadline:
            report = lab.get(f"/api/entropy/quality-reports/{made['id']}/").json()
            if report["state"] in ("done", "failed") and runtime.get_service().pool.level() > 0:
                break
            time.sleep(0.3)
        else:
            worker.terminate()
            pytest.fail(f"the worker did not finish ({report}):\n" + worker.communicate(timeout=20)[0][-3000:])
        assert report["state"] == "done" and report["result"]["sequences"] == 3
        assert report["result"]["provenance"]["sources"][0]["source"] == "urandom"
        assert runtime.get_service().pool.level() > 0  # filled by the worker, shared through Redis
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)


@pytest.mark.django_db
def test_a_report_whose_worker_died_is_taken_over_by_its_redelivery_and_done_once(lab, file_source):
    from qrng import reports

    report = reports.start_report(lab.tenant, 250_000, enqueue=lambda _id: None)
    # The first run claimed it and died with its worker (kill -9): the report says running, nobody runs it.
    QualityReport.objects.unscoped().filter(pk=report.pk).update(state=QualityReport.State.RUNNING)
    assert reports.run_report(str(report.pk)) == "not queued"  # an ordinary duplicate delivery does nothing
    assert reports.run_report(str(report.pk), take_over=True) == QualityReport.State.DONE  # the redelivery
    done = QualityReport.objects.unscoped().get(pk=report.pk)
    assert done.state == QualityReport.State.DONE and done.result["bytes"] == 250_000
    assert reports.run_report(str(report.pk), take_over=True) == "not queued"  # done once
    assert reports.fail_report(str(report.pk), "late") and QualityReport.objects.unscoped().get(
        pk=report.pk).state == QualityReport.State.DONE  # a late failure does not undo a finished report
