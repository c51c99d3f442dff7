"""Every main page at laptop and phone widths: screenshots under var/browser-artifacts/, and axe-core finds no
serious or critical accessibility violation (WCAG 2.1 A/AA rules and axe's best practices)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def first_link(browser, page: str, css: str) -> str:
    browser.get(page)
    links = browser.find_all(css)
    assert links, f"no {css} on {page}"
    return links[0].get_attribute("href").removeprefix(browser.base)


def test_main_pages_screenshots_and_accessibility(researcher, portal_stack):
    # an object of each kind to show: a key stream (opened through the API) and the demo SAE
    response = portal_stack.api("POST", "/api/etsi004/open_connect", headers={"X-SAE-ID": "demo-cait"}, json={
        "source": "sae://demo-cait", "destination": "sae://demo-rect", "QoS": {"Key_chunk_size": 32, "TTL": 600}})
    assert response.status_code == 200 and response.json()["status"] == 1, response.text
    pages = {
        "dashboard": "/", "network": "/services/network/", "link": "/services/network/links/ccs-rectorado/",
        "saes": "/services/", "sae": "/services/saes/demo-cait/", "streams": "/services/streams/",
        "stream": f"/services/streams/{response.json()['Key_stream_ID']}/", "entropy": "/entropy/",
        "usage": "/usage/?meter=entropy_bytes", "tokens": "/tokens/", "tunnels": "/tunnels/", "tls": "/tls/",
    }
    failures = {}
    for name, path in pages.items():
        researcher.get(path)
        researcher.find("main h1")
        assert "Server Error" not in researcher.text("body"), name
        researcher.screenshot(name)
        bad = researcher.axe(name)
        if bad:
            failures[name] = bad
    researcher.get("/")  # the phone layout passes too (the nav wraps, tables fit)
    researcher.driver.set_window_size(390, 844)
    try:
        if bad := researcher.axe("dashboard-phone"):
            failures["dashboard-phone"] = bad
        width = researcher.driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, f"the dashboard scrolls sideways on a phone ({width} px)"
    finally:
        researcher.driver.set_window_size(1366, 900)
    assert not failures, failures


def test_the_sign_in_page_is_accessible(browser):
    browser.sign_out()
    browser.get("/accounts/login/")
    browser.find("input[name=login]")
    browser.screenshot("sign-in")
    browser.assert_accessible("sign-in")


def test_keyboard_reaches_the_navigation_with_a_visible_focus(researcher):
    from selenium.webdriver.common.keys import Keys

    researcher.get("/")
    body = researcher.find("body")
    body.send_keys(Keys.TAB)  # the skip link first
    active = researcher.driver.switch_to.active_element
    assert active.text == "Skip to content"
    outline = researcher.driver.execute_script(
        "return getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    for _ in range(3):
        active.send_keys(Keys.TAB)
        active = researcher.driver.switch_to.active_element
    assert active.tag_name == "a" and active.get_attribute("href")
    assert researcher.driver.execute_script("return getComputedStyle(document.activeElement).outlineStyle") != "none"
