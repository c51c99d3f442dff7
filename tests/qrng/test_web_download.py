"""Entropy from the web pages (signed in): the download is metered like the API, bad input spends nothing; the
dashboard's live fragment and the usage page's filters see it."""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.models import UsageRecord


@pytest.fixture
def lab_with_entropy(make_entropy_lab, use_sources, random_file):
    path, _ = random_file()
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    return make_entropy_lab("lab")


def web(user) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


def test_entropy_download_from_the_page_meters_and_bad_input_spends_nothing(lab_with_entropy):
    lab = lab_with_entropy
    browser = web(lab.owner)
    assert browser.get("/entropy/download?bytes=4096").status_code == 405  # never a GET: cross-site links
    for form in ({"bytes": "0"}, {"bytes": "lots"}, {"bytes": "10", "format": "pdf"}, {"bytes": str((1 << 30) + 1)}):
        response = browser.post("/entropy/download", form)
        assert response.status_code == 302, form
    assert not UsageRecord.objects.for_tenant(lab.tenant).filter(meter="entropy_bytes").exists()
    response = browser.post("/entropy/download", {"bytes": "4096", "format": "raw"})
    assert response.status_code == 200 and len(b"".join(response.streaming_content)) == 4096
    assert response["Content-Disposition"].startswith("attachment;")
    assert UsageRecord.objects.for_tenant(lab.tenant).get(meter="entropy_bytes").quantity == 4096


def test_dashboard_fragment_and_usage_page_filters(lab_with_entropy):
    lab = lab_with_entropy
    browser = web(lab.owner)
    assert len(browser.post("/entropy/download", {"bytes": "2048", "format": "hex"}).getvalue()) == 4096
    fragment = browser.get("/fragments/usage/?period=week").content.decode()
    assert 'data-quota="entropy_bytes.day" data-used="2048"' in fragment and 'data-total="2048"' in fragment
    assert "<html" not in fragment
    page = browser.get("/usage/?meter=entropy_bytes&since=2026-01-01").content.decode()
    assert "<svg" in page and "meter=entropy_bytes" in page  # the chart and the CSV link with the filter
    bad = browser.get("/usage/?meter=nope&since=yesterday").content.decode()
    assert "unknown meter" in bad and "From must be a date" in bad
