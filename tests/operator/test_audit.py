"""The audit log: written by the services (API and web alike), filtered, exported, tenant-scoped, secret-free."""

from __future__ import annotations

import csv
import io
import json

import pytest
from allauth.mfa.models import Authenticator
from django.test import Client

from tenants import audit, services, tokens
from tenants.models import ApiToken, AuditEvent, Membership
from tests.services.test_streams import call, ok, open_stream


@pytest.fixture
def operator(make_user):
    staff = make_user("ops", staff=True)
    Authenticator.objects.create(user=staff, type=Authenticator.Type.TOTP, data={"secret": "x"})
    browser = Client()
    browser.force_login(staff)
    return browser


def events(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.unscoped().filter(**filters).order_by("id"))


def test_token_creation_and_revocation_through_the_api_name_the_token_and_hide_the_secret(two_tenants):
    a, ca = two_tenants["a"], two_tenants["ca"]
    created = ca.post("/api/tokens/", {"name": "ci", "scopes": ["billing:read"]}, format="json")
    assert created.status_code == 201
    secret, prefix = created.json()["token"], created.json()["prefix"]
    [made] = events(action="token.created", object_id=prefix)
    assert made.tenant == a and made.actor_type == "token" and made.actor.startswith("qx_")
    assert made.details["scopes"] == ["billing:read"] and made.request_id and made.ip == "127.0.0.1"
    token = ApiToken.objects.for_tenant(a).get(key=prefix[3:])
    assert ca.post(f"/api/tokens/{token.pk}/revoke/").status_code == 200
    [revoked] = events(action="token.revoked", object_id=prefix)
    assert revoked.tenant == a and revoked.actor_type == "token"
    everything = json.dumps([e.details for e in AuditEvent.objects.unscoped()]) + "".join(
        e.actor for e in AuditEvent.objects.unscoped())
    assert secret not in everything and secret.split(".")[1] not in everything


def test_web_actions_are_recorded_with_the_signed_in_user(two_tenants):
    browser = Client()
    browser.force_login(two_tenants["ua"])
    browser.post("/tokens/", {"name": "web", "scopes": ["billing:read"]})
    [made] = events(action="token.created", details__name="web")
    assert made.actor_type == "user" and made.actor == "alice" and made.tenant == two_tenants["a"]


def test_scrub_drops_secret_looking_keys_at_any_depth():
    assert audit.scrub({"name": "x", "token": "qx_1.s", "nested": [{"private_key": "k", "psk": "p", "ok": 1}],
                        "password1": "pw", "key": "b64"}) == {"name": "x", "nested": [{"ok": 1}]}


def test_sign_ins_and_failed_sign_ins_are_recorded(make_user):
    from allauth.account.models import EmailAddress

    carol = make_user("carol")
    EmailAddress.objects.create(user=carol, email=carol.email, primary=True, verified=True)
    client = Client()
    client.post("/accounts/login/", {"login": "carol", "password": "wrong"})
    client.post("/accounts/login/", {"login": "carol", "password": "pw-" + "carol" * 2})
    assert [e.action for e in events(action__startswith="auth.")] == ["auth.sign_in_failed", "auth.signed_in"]
    signed_in = events(action="auth.signed_in")[0]
    assert signed_in.actor == "carol" and signed_in.actor_type == "user" and signed_in.ip == "127.0.0.1"


def test_quota_plan_and_status_changes_through_the_operator_api(two_tenants, make_user, client_for, plan):
    staff = make_user("root", staff=True)
    Authenticator.objects.create(user=staff, type=Authenticator.Type.TOTP, data={"secret": "x"})
    Membership.objects.create(tenant=two_tenants["a"], user=staff, role="owner")
    op = client_for(staff, two_tenants["a"], ["operator"])
    assert op.patch("/api/tenants/bravo/", {"quota_overrides": {"key_streams": 7}}, format="json").status_code == 200
    assert op.post("/api/tenants/bravo/suspend/").status_code == 200
    assert op.post("/api/tenants/bravo/activate/").status_code == 200
    assert op.patch("/api/plans/test/", {"limits": {"key_streams": 3}}, format="json").status_code == 200
    actions = [e.action for e in events()]
    assert actions[-4:] == ["tenant.quota_overrides_changed", "tenant.suspended", "tenant.resumed",
                            "plan.limits_changed"]
    override = events(action="tenant.quota_overrides_changed")[0]
    assert override.details == {"before": {}, "after": {"key_streams": 7}} and override.tenant == two_tenants["b"]
    assert events(action="plan.limits_changed")[0].tenant is None  # a plan is no tenant's


def test_orders_placed_and_closed_are_recorded_for_key_streams(make_lab):
    lab = make_lab("upm")
    ksid = open_stream(lab)
    assert ok(call(lab, "upm-cait", "close", Key_stream_ID=ksid))["status"] == 0
    placed, closed = events(action="order.placed"), events(action="order.closed")
    assert len(placed) == 1 and len(closed) == 1
    assert placed[0].object_type == closed[0].object_type == "key_stream"
    assert placed[0].object_id == closed[0].object_id and placed[0].tenant == lab.tenant
    assert closed[0].details["state"] == "closed" and closed[0].actor_type == "token"


def test_a_worker_acting_is_the_system(two_tenants):
    token = ApiToken.objects.for_tenant(two_tenants["a"]).first()
    with audit.system("expire_tokens"):
        tokens.revoke_token(token, reason="expired")
    [event] = events(action="token.revoked")
    assert event.actor_type == "system" and event.actor == "expire_tokens" and event.ip is None


def test_tenants_see_only_their_own_events_and_viewers_none(two_tenants, member, client_for):
    services.set_quota_overrides(two_tenants["a"], {"key_streams": 1})
    services.set_quota_overrides(two_tenants["b"], {"key_streams": 1})
    mine = two_tenants["ca"].get("/api/audit/").json()
    rows = mine["results"] if isinstance(mine, dict) else mine
    assert rows and {r["tenant"] for r in rows} == {"alpha"}
    viewer = member(two_tenants["a"], "vic", role="viewer")
    assert client_for(viewer, two_tenants["a"], ["billing:read"]).get("/api/audit/").status_code == 403
    assert two_tenants["ca"].get("/api/operator/audit/").status_code == 403  # not an operator


def test_operator_audit_filters_and_csv_export(two_tenants, operator):
    services.set_status(two_tenants["a"], "suspended")
    services.set_status(two_tenants["b"], "suspended")
    services.set_status(two_tenants["b"], "active")
    page = operator.get("/operator/audit/", {"tenant": "bravo", "action": "tenant."}).content.decode()
    assert "tenant.suspended" in page and "tenant.resumed" in page
    response = operator.get("/api/operator/audit/export/", {"tenant": "bravo", "action": "tenant.suspended"})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["tenant"], r["action"]) for r in rows] == [("bravo", "tenant.suspended")]
    listed = operator.get("/api/operator/audit/", {"actor": "nobody-at-all"}).json()
    assert (listed["results"] if isinstance(listed, dict) else listed) == []
    bad = operator.get("/api/operator/audit/", {"since": "yesterday"})
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]["message"]
    web_csv = operator.get("/operator/audit/", {"format": "csv", "tenant": "alpha"})
    assert b"tenant.suspended" in b"".join(web_csv.streaming_content)


def test_the_audit_log_is_append_only(two_tenants):
    services.set_status(two_tenants["a"], "suspended")
    event = events(action="tenant.suspended")[0]
    event.action = "nothing"
    with pytest.raises(Exception, match="append-only"):
        event.save()


def test_expired_tokens_are_recorded_as_revoked_by_the_system(two_tenants):
    from datetime import timedelta

    from django.utils import timezone

    token = ApiToken.objects.for_tenant(two_tenants["a"]).first()
    ApiToken.objects.for_tenant(two_tenants["a"]).filter(pk=token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert tokens.expire_tokens() == 1 and tokens.expire_tokens() == 0
    [event] = events(action="token.revoked")
    assert event.details["reason"] == "expired" and event.actor_type == "system" and event.tenant == two_tenants["a"]
