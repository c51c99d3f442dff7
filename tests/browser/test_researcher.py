"""The researcher's journeys in a real browser (headless Chromium) on the whole stack of ``make run``.

Sign in, register an SAE and download its bundle (once), revoke it with a confirmation; download entropy and
see the quota bar and the usage chart move (also live, without a reload); open a key stream from its page,
connect the peer and close it; see a cut twin link drawn down on the network picture and come back.
"""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.slow
MiB = 1 << 20


def confirm(browser) -> None:
    """Accept the page's confirmation dialog (the <dialog> live.js opens for data-confirm forms)."""
    browser.find("#confirm-dialog[open] #confirm-ok").click()


def test_register_an_sae_and_download_its_bundle_once(researcher):
    name = f"web-{uuid.uuid4().hex[:6]}"
    researcher.get("/services/")
    researcher.find("#sae-name").send_keys(name)
    researcher.find("#sae-node option[value=Rectorado], #sae-node option:nth-child(2)").click()
    researcher.find("form.row button[type=submit]").click()
    researcher.find("#bundle-download")
    assert f"SAE {name}" in researcher.text("h1")
    before = {p.name for p in researcher.downloads.iterdir()}
    researcher.find("#bundle-download").click()
    bundle = researcher.wait_for_download(before).read_text()
    assert bundle.count("BEGIN CERTIFICATE") >= 2 and "PRIVATE KEY" in bundle  # certificate, key, CA chain
    researcher.screenshot("sae-new-bundle")

    researcher.get(f"/services/saes/{name}/")  # the bundle is shown once: not on a later visit
    assert not researcher.find_all("#bundle-download")
    assert "valid" in researcher.text("#sae-cert-state")
    researcher.find("form[action$=revoke] button").click()
    confirm(researcher)
    researcher.wait_until(lambda: "revoked" in researcher.text("#sae-cert-state"), what="the revoked state")


def used(browser, quota_key: str) -> int:
    return int(browser.find(f"tr[data-quota='{quota_key}']").get_attribute("data-used"))


def chart_total(browser, meter: str) -> int:
    return int(browser.find(f"figure[data-meter='{meter}']").get_attribute("data-total"))


def bar_percent(browser, quota_key: str) -> int:
    return int(browser.find(f"tr[data-quota='{quota_key}'] [role=meter]").get_attribute("aria-valuenow"))


def test_entropy_download_moves_the_usage_bar_and_chart(researcher, portal_stack):
    researcher.get("/")
    used_before, total_before = used(researcher, "entropy_bytes.day"), chart_total(researcher, "entropy_bytes")
    percent_before = bar_percent(researcher, "entropy_bytes.day")

    researcher.get("/entropy/")
    amount = researcher.find("#e-bytes")
    amount.clear()
    amount.send_keys(str(8 * MiB))  # 3 % of the demo plan's daily 256 MiB: the bar visibly moves
    before = {p.name for p in researcher.downloads.iterdir()}
    researcher.find("#entropy-download button").click()
    assert researcher.wait_for_download(before, timeout=60).stat().st_size == 8 * MiB

    researcher.get("/")
    assert used(researcher, "entropy_bytes.day") == used_before + 8 * MiB
    assert chart_total(researcher, "entropy_bytes") == total_before + 8 * MiB
    assert bar_percent(researcher, "entropy_bytes.day") > percent_before
    researcher.screenshot("dashboard")

    # Live: entropy drawn elsewhere (the API, with the demo token) shows up on the open page without a reload.
    marker = researcher.driver.execute_script("document.body.dataset.marker = 'same-page'; return 1;")
    assert marker == 1
    response = portal_stack.api("GET", "/api/entropy", params={"bytes": 4096, "format": "hex"})
    assert response.status_code == 200, response.text
    researcher.wait_until(lambda: used(researcher, "entropy_bytes.day") == used_before + 8 * MiB + 4096,
                          what="the live quota bar")
    assert researcher.driver.execute_script("return document.body.dataset.marker") == "same-page"


def test_open_connect_and_close_a_key_stream_from_its_page(researcher, portal_stack):
    researcher.get("/services/streams/")
    researcher.find("#s-source option[value=demo-cait]").click()
    researcher.find("#s-dest option[value=demo-rect]").click()
    researcher.find("#open-stream button[type=submit]").click()
    state = researcher.find("#stream-state")
    assert state.get_attribute("data-state") == "opened", researcher.text("main")
    ksid = researcher.driver.current_url.rstrip("/").rsplit("/", 1)[1]
    assert portal_stack.api("GET", f"/api/qkd/streams/{ksid}").json()["state"] == "opened"
    assert f"Key_stream_ID={ksid}" in researcher.text("#stream-curl")

    researcher.find("form[action$=connect] button").click()
    researcher.wait_until(lambda: researcher.find("#stream-state").get_attribute("data-state") == "connected",
                          what="the connected state")
    researcher.screenshot("key-stream")
    researcher.find("#close-stream").click()
    confirm(researcher)
    researcher.wait_until(lambda: researcher.find("#stream-state").get_attribute("data-state") == "closed",
                          what="the closed state")
    assert portal_stack.api("GET", f"/api/qkd/streams/{ksid}").json()["state"] == "closed"


def link_state(browser, link: str) -> str:
    return browser.find(f"svg.network a[data-link='{link}']").get_attribute("data-state")


def test_the_network_picture_shows_a_cut_link_down_then_restored(researcher, portal_stack):
    researcher.get("/services/network/")
    assert link_state(researcher, "cait-ccs") == "up"
    assert "Simulated backend" in researcher.text("svg.network")
    portal_stack.twin_admin("cait-ccs", "cut")
    try:
        started = time.monotonic()
        researcher.wait_until(lambda: link_state(researcher, "cait-ccs") != "up", timeout=20,
                              what="the cut link drawn down")
        print(f"cut link drawn down after {time.monotonic() - started:.1f} s (live refresh, no reload)")
        assert "DOWN" in researcher.text("svg.network a[data-link='cait-ccs']").upper() or \
            link_state(researcher, "cait-ccs") == "cut"
        researcher.screenshot("network-cut")
    finally:
        portal_stack.twin_admin("cait-ccs", "restore")
    researcher.wait_until(lambda: link_state(researcher, "cait-ccs") == "up", timeout=20,
                          what="the restored link drawn up")
    researcher.find("svg.network a[data-link='cait-ccs']").click()  # a link's page: its history
    researcher.find("#link-state")
    assert "Secret key rate" in researcher.text("main")


def test_create_a_token_shown_once_use_it_and_revoke_it(researcher, portal_stack):
    import requests

    researcher.get("/tokens/")
    researcher.find("#t-name").send_keys("browser-script")
    researcher.find("input[name=scopes][value='entropy:read']").click()
    researcher.find("form button[type=submit]:not([name=revoke])").click()
    secret = researcher.find("#new-token").text.strip()
    assert secret.startswith("qx_")
    auth = {"Authorization": f"Bearer {secret}"}
    works = requests.get(portal_stack.base + "/api/entropy", params={"bytes": 16, "format": "hex"}, headers=auth,
                         timeout=30)
    assert works.status_code == 200, works.text
    researcher.get("/tokens/")  # shown once: a later visit has only its prefix
    assert secret not in researcher.text("main") and not researcher.find_all("#new-token")
    researcher.find("button[aria-label='Revoke token browser-script']").click()
    confirm(researcher)
    researcher.wait_until(lambda: "revoked" in researcher.text("main"), what="the revoked token")
    refused = requests.get(portal_stack.base + "/api/entropy", params={"bytes": 16, "format": "hex"}, headers=auth,
                           timeout=30)
    assert refused.status_code == 401, refused.text


def test_usage_page_filters_charts_and_exports_csv(researcher, portal_stack):
    assert portal_stack.api("GET", "/api/entropy", params={"bytes": 1000, "format": "hex"}).status_code == 200
    researcher.get("/usage/")
    researcher.find("#f-meter option[value=entropy_bytes]").click()
    researcher.find("form.row button[type=submit]").click()
    researcher.find("figure.chart svg")
    rows = researcher.find_all("main table tbody tr")
    assert rows and all("entropy_bytes" in r.text for r in rows)
    before = {p.name for p in researcher.downloads.iterdir()}
    researcher.find("#csv-export").click()
    csv_text = researcher.wait_for_download(before).read_text()
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("created_at,meter,kind,quantity") and len(lines) >= 2
    assert all(",entropy_bytes," in line for line in lines[1:])


def test_a_quality_report_shows_progress_then_its_result(researcher):
    researcher.get("/entropy/")
    researcher.find("form[method=post] #r-bytes")
    researcher.find("form[method=post] button[type=submit]").click()
    researcher.wait_until(lambda: "/entropy/quality/" in researcher.driver.current_url, what="the report's page")
    assert researcher.find("#report-live h2").text.startswith("State:")
    # the page updates itself (no reload) from queued/running to done, with the result and the p-value plot
    researcher.wait_until(lambda: "tests passed" in researcher.text("#report-live"), timeout=90,
                          what="the report's result")
    researcher.find("#report-live svg")
    researcher.screenshot("quality-report")
    researcher.assert_accessible("quality-report")
