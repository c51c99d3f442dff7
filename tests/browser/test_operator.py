"""The operator's journeys in a real browser on the whole stack of ``make run``.

The demo operator signs in with the demo's second factor (the TOTP ``bootstrap_demo`` pre-enrolled, its code from
``manage.py demo_totp``), suspends the demo tenant from its page and the tenant's token is refused at once by the
web API and by the key gateway (ETSI 014 over mTLS with the demo SAE's certificate), resumes it; cuts a twin link
on the network operations page, sees it drawn down, restores it; finds all of it in the audit log. Screenshots and
axe-core on every operator page.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.browser.conftest import ARTIFACTS

pytestmark = pytest.mark.slow
REFUSAL_BOUND_S = 1.0  # the "refused within a second": the poll below gives up after this
SIGN_IN_BOUND_S = 60.0  # password hashing, redirects, the twin's admin calls on a loaded 2-core machine
CODE_CHANGE_BOUND_S = 35.0  # a TOTP code signs in once: a second sign-in waits for the next one (30 s period)


def confirm(browser) -> None:
    browser.find("#confirm-dialog[open] #confirm-ok").click()


def totp_code(portal_stack) -> str:
    """The demo operator's current code, never one already used (allauth accepts each code once)."""
    deadline = time.monotonic() + CODE_CHANGE_BOUND_S
    while True:
        # A code still current for 20 s: starting manage.py takes seconds on a loaded machine, and allauth accepts
        # only the current period's code.
        code = portal_stack.manage("demo_totp", "--min-valid", "20").strip()
        if code != getattr(portal_stack, "last_totp", None):
            portal_stack.last_totp = code
            return code
        assert time.monotonic() < deadline, "the demo TOTP code never changed"
        time.sleep(1)


@pytest.fixture
def operator(browser, portal_stack):
    browser.sign_out()
    browser.get("/accounts/login/?next=/operator/tenants/")
    browser.find("input[name=login]").send_keys("operator")
    browser.find("input[name=password]").send_keys(portal_stack.passwords["operator"])
    browser.find("form button[type=submit], form input[type=submit]").click()
    browser.wait_until(lambda: "/accounts/2fa/authenticate" in browser.driver.current_url, SIGN_IN_BOUND_S,
                       what="the second factor to be asked for (TOTP is enrolled)")
    browser.find("input[name=code]", timeout=SIGN_IN_BOUND_S).send_keys(totp_code(portal_stack) + "\n")
    try:
        browser.wait_until(lambda: browser.driver.current_url.endswith("/operator/tenants/"), SIGN_IN_BOUND_S,
                           what="the operator's tenants page after the second factor")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: at {browser.driver.current_url}: {browser.text('main')[:500]}") from None
    return browser


def gateway_status(portal_stack) -> int:
    """ETSI 014 status through the key gateway (HTTPS, mTLS) with the demo SAE's client certificate."""
    saes = portal_stack.var / "demo-saes"
    response = requests.get(f"https://127.0.0.1:{portal_stack.etsi_port}/api/v1/keys/demo-rect/status",
                            cert=(str(saes / "demo-cait.crt"), str(saes / "demo-cait.key")),
                            verify=str(saes / "ca.crt"), timeout=10)
    return response.status_code


def refused_within(portal_stack, refused: bool) -> dict[str, dict]:
    """Poll the web API (demo token) and the key gateway (demo SAE certificate) until both are refused (or both
    served again). The bound is on when a request is *sent*: one sent more than REFUSAL_BOUND_S after the change
    and still answered the old way fails the test (a slow answer on a loaded machine does not). Returns, for
    each, the attempt that showed the change and when it was sent."""
    started, seen, attempts = time.monotonic(), {}, {"api": 0, "gateway": 0}
    checks = {"api": lambda: portal_stack.api("GET", "/api/quotas/").status_code == 403,
              "gateway": lambda: gateway_status(portal_stack) == 401}
    while len(seen) < len(checks):
        for name, check in checks.items():
            if name in seen:
                continue
            sent = time.monotonic() - started
            assert sent < REFUSAL_BOUND_S, f"{name} not {'refused' if refused else 'served'} within " \
                                           f"{REFUSAL_BOUND_S}s: {attempts}"
            attempts[name] += 1
            if check() == refused:
                seen[name] = {"attempt": attempts[name], "sent_after_s": round(sent, 4)}
    return seen


def test_operator_suspends_the_tenant_and_its_token_is_refused_at_once_then_resumes(operator, portal_stack):
    assert portal_stack.api("GET", "/api/quotas/").status_code == 200 and gateway_status(portal_stack) == 200
    operator.screenshot("operator-tenants")
    operator.assert_accessible("operator-tenants")
    operator.get("/operator/tenants/demo-lab/")
    assert operator.text("#tenant-status") == "active"
    operator.screenshot("operator-tenant")
    operator.assert_accessible("operator-tenant")

    operator.find("button[value=suspend]").click()
    confirm(operator)
    try:
        operator.wait_until(lambda: operator.text("#tenant-status") == "suspended", what="the suspended state")
        suspended = refused_within(portal_stack, refused=True)
        body = portal_stack.api("GET", "/api/quotas/").json()
        assert "suspended" in body["error"]["message"]
        operator.screenshot("operator-tenant-suspended")
    finally:  # the other browser tests use the demo tenant
        operator.get("/operator/tenants/demo-lab/")
        operator.find("button[value=resume]").click()
    operator.wait_until(lambda: operator.text("#tenant-status") == "active", what="the active state")
    resumed = refused_within(portal_stack, refused=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "suspension-timing.json").write_text(json.dumps({"refused_after_s": suspended,
                                                                  "served_again_after_s": resumed}, indent=1))
    print(f"suspension: refused after {suspended}, served again after {resumed} (seconds after the page answered)")


def link_state(browser, link: str) -> str:
    return browser.find(f"svg.network [data-link='{link}']").get_attribute("data-state")


def test_operator_cuts_a_twin_link_sees_it_drawn_down_and_restores_it(operator, portal_stack):
    operator.get("/operator/network/")
    operator.wait_until(lambda: link_state(operator, "cait-ccs") == "up", SIGN_IN_BOUND_S, what="cait-ccs up")
    nodes = operator.text("#nodes").lower()
    assert "kme endpoint" in nodes and "https://127.0.0.1:" in nodes and "ipsec:" in nodes
    operator.screenshot("operator-network")
    operator.assert_accessible("operator-network")
    try:
        operator.find("tr[data-link-row='cait-ccs'] button[value=cut]").click()
        confirm(operator)
        # the bound covers the POST, the twin's admin call and the page's redraw on a loaded 2-core machine
        operator.wait_until(lambda: link_state(operator, "cait-ccs") == "cut", SIGN_IN_BOUND_S,
                            what="the cut link drawn down")
        assert "link is cut" in operator.text("#alarms")
        operator.screenshot("operator-network-cut")
        operator.assert_accessible("operator-network-cut")
    finally:
        operator.get("/operator/network/")
        if operator.find_all("tr[data-link-row='cait-ccs'] button[value=restore]"):
            operator.find("tr[data-link-row='cait-ccs'] button[value=restore]").click()
    operator.wait_until(lambda: link_state(operator, "cait-ccs") == "up", SIGN_IN_BOUND_S,
                        what="the restored link drawn up")


def test_the_audit_log_shows_the_operators_actions(operator, portal_stack):
    operator.get("/operator/audit/?tenant=demo-lab")
    text = operator.text("table.audit")
    assert "tenant.suspended" in text and "tenant.resumed" in text and "operator" in text
    operator.get("/operator/audit/?action=twin.")
    assert "twin.link_cut" in operator.text("table.audit") and "twin.link_restored" in operator.text("table.audit")
    operator.get("/operator/audit/")
    assert "auth.signed_in" in operator.text("table.audit")
    operator.screenshot("operator-audit")
    operator.assert_accessible("operator-audit")
    operator.get("/operator/plans/")
    operator.screenshot("operator-plans")
    operator.assert_accessible("operator-plans")
