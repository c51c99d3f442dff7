"""Another tenant's quality report by every route that names it: the API, its p-value plot and its web page."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from portal.celery_app import app
from tests.fixtures import same_error


@pytest.fixture
def eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def victims_report(make_entropy_lab, use_sources, random_file, eager, django_capture_on_commit_callbacks):
    path, _ = random_file(1 << 20)
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    victim, attacker = make_entropy_lab("victim"), make_entropy_lab("attacker")
    with django_capture_on_commit_callbacks(execute=True):
        made = victim.client.post("/api/entropy/quality-reports/", {"bytes": 125_000}, format="json")
    assert made.status_code == 202, made.content
    report_id = made.json()["id"]
    assert victim.get(f"/api/entropy/quality-reports/{report_id}/").json()["state"] == "done"
    return victim, attacker, report_id


def test_the_plot_of_another_tenants_report_is_404_like_an_unknown_one(victims_report):
    victim, attacker, report_id = victims_report
    own = victim.get(f"/api/entropy/quality-reports/{report_id}/plot.svg")
    assert own.status_code == 200 and b"<svg" in own.content
    stolen = attacker.get(f"/api/entropy/quality-reports/{report_id}/plot.svg")
    unknown = attacker.get(f"/api/entropy/quality-reports/{uuid.uuid4()}/plot.svg")
    assert stolen.status_code == unknown.status_code == 404, stolen.content[:300]
    assert b"<svg" not in stolen.content and same_error(stolen, unknown)
    assert attacker.get(f"/api/entropy/quality-reports/{report_id}/").status_code == 404


def test_the_page_of_another_tenants_report_is_404(victims_report):
    victim, attacker, report_id = victims_report
    browser = Client()
    browser.force_login(victim.owner)
    own = browser.get(f"/entropy/quality/{report_id}/")
    assert own.status_code == 200 and "<svg" in own.content.decode()
    browser.force_login(attacker.owner)
    stolen = browser.get(f"/entropy/quality/{report_id}/")
    assert stolen.status_code == 404 and "<svg" not in stolen.content.decode()
