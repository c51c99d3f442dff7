"""The web shell: dashboard, token page, operator page, sign-up with email verification, staff MFA."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from tenants import quota
from tenants.models import ApiToken, Membership, Role
from tenants.tokens import verify_token


@pytest.fixture
def browser(two_tenants) -> Client:
    client = Client()
    client.force_login(two_tenants["ua"])
    return client


def test_dashboard_shows_plan_and_used_vs_limit(browser, two_tenants):
    quota.consume(two_tenants["a"], "qkd_key_bits", 2_500, "k1")
    html = browser.get("/").content.decode()
    assert "Alpha" in html and "Test" in html  # tenant and plan
    assert "qkd_key_bits.day" in html and "2,500" in html and "10,000" in html
    assert 'style="width: 25%"' in html  # 2,500 of 10,000


def test_token_page_shows_the_secret_once_and_revokes(browser, two_tenants):
    response = browser.post("/tokens/", {"name": "lab", "scopes": ["billing:read", "keys:read"]})
    assert response["Cache-Control"] == "no-store"
    secret = re.search(r'<code id="new-token">([^<]+)</code>', response.content.decode()).group(1)
    token = verify_token(secret)
    assert token.scopes == ["billing:read", "keys:read"] and token.tenant == two_tenants["a"]
    again = browser.get("/tokens/").content.decode()
    assert secret not in again and token.prefix in again
    browser.post("/tokens/", {"revoke": str(token.pk)})
    assert ApiToken.objects.for_tenant(two_tenants["a"]).get(pk=token.pk).revoked_at is not None


def test_token_page_cannot_revoke_another_tenants_token(browser, two_tenants):
    foreign = ApiToken.objects.for_tenant(two_tenants["b"]).first()
    browser.post("/tokens/", {"revoke": str(foreign.pk)})
    assert ApiToken.objects.for_tenant(two_tenants["b"]).get(pk=foreign.pk).revoked_at is None


def test_usage_page_lists_the_tenants_ledger(browser, two_tenants):
    quota.consume(two_tenants["a"], "entropy_bytes", 4096, "e1", reference="entropy:req-1")
    quota.consume(two_tenants["b"], "entropy_bytes", 8192, "e2", reference="entropy:req-2")
    html = browser.get("/usage/").content.decode()
    assert "entropy:req-1" in html and "entropy:req-2" not in html


def test_pages_need_login():
    for url in ("/", "/tokens/", "/usage/", "/services/"):
        response = Client().get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_operator_page_is_for_staff_with_mfa(two_tenants, make_user, settings):
    browser = Client()
    browser.force_login(two_tenants["ua"])
    assert browser.get("/operator/tenants/").status_code == 302  # not staff
    staff = make_user("root", staff=True)
    browser.force_login(staff)
    response = browser.get("/operator/tenants/")
    assert response.status_code == 302 and "/accounts/2fa/totp/activate" in response["Location"]
    assert browser.get("/admin/").status_code == 302
    from allauth.mfa.models import Authenticator

    Authenticator.objects.create(user=staff, type=Authenticator.Type.TOTP, data={"secret": "x"})
    html = browser.get("/operator/tenants/").content.decode()
    assert "Alpha" in html and "Bravo" in html


def test_signup_sends_a_verification_email_and_login_works_after(db, default_plans,
                                                                 django_capture_on_commit_callbacks):
    client = Client()
    form = {"email": "new@example.org", "username": "newbie",
            "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"}
    with django_capture_on_commit_callbacks(execute=True):  # allauth sends the email on commit
        response = client.post("/accounts/signup/", form)
    assert response.status_code == 302
    assert len(mail.outbox) == 1 and "new@example.org" in mail.outbox[0].to
    link = re.search(r"http://[^\s]+/accounts/confirm-email/[^\s]+", mail.outbox[0].body).group(0)
    path = link.split("testserver", 1)[1]
    assert client.post(path).status_code == 302
    client.logout()
    assert client.post("/accounts/login/", {"login": "newbie", "password": "a-long-passphrase-42"}).status_code == 302
    assert client.get("/").status_code == 200


def test_tenant_switch_is_limited_to_memberships(two_tenants, make_tenant):
    gamma = make_tenant("gamma")
    Membership.objects.create(tenant=gamma, user=two_tenants["ua"], role=Role.VIEWER)
    browser = Client()
    browser.force_login(two_tenants["ua"])
    assert "Gamma" in browser.get("/?tenant=gamma").content.decode()
    assert "Bravo" not in browser.get("/?tenant=bravo").content.decode()
