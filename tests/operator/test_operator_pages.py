"""Operator pages: tenants (create, plan, overrides, suspend/resume with immediate effect), plans, network
operations on the real twin (cut/restore, eavesdropper), the demo operator's TOTP."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from django.core.management import CommandError, call_command
from django.test import Client

from services.models import QkdNode
from tenants import quota, services
from tenants.demo import DEMO_TOTP_MARK, bootstrap_demo, demo_totp_code
from tenants.models import AuditEvent, Membership, Plan, Tenant


@pytest.fixture
def operator(make_user):
    staff = make_user("ops", staff=True)
    Authenticator.objects.create(user=staff, type=Authenticator.Type.TOTP, data={"secret": "x"})
    browser = Client()
    browser.force_login(staff)
    return browser


def test_operator_pages_need_staff_with_totp(two_tenants, make_user):
    researcher, staff_without_totp = Client(), Client()
    researcher.force_login(two_tenants["ua"])
    staff_without_totp.force_login(make_user("root", staff=True))
    for url in ("/operator/tenants/", "/operator/tenants/alpha/", "/operator/plans/", "/operator/audit/",
                "/operator/network/"):
        assert researcher.get(url).status_code == 302, url
        response = staff_without_totp.get(url)
        assert response.status_code == 302 and "/accounts/2fa/totp/activate" in response["Location"], url


def test_create_a_tenant_and_change_its_plan_and_overrides(operator, plan):
    other = Plan.objects.create(name="Big", slug="big")
    response = operator.post("/operator/tenants/", {"name": "New lab", "slug": "new-lab", "plan": "test"})
    assert response.status_code == 302 and response["Location"].endswith("/operator/tenants/new-lab/")
    tenant = Tenant.objects.get(slug="new-lab")
    operator.post("/operator/tenants/new-lab/", {"action": "plan", "plan": "big", "name": "New lab"})
    operator.post("/operator/tenants/new-lab/", {"action": "overrides", "override-key_streams": "9",
                                                 "override-ipsec_tunnels": "unlimited"})
    tenant.refresh_from_db()
    assert tenant.plan == other and services.quota_overrides(tenant) == {"key_streams": 9, "ipsec_tunnels": -1}
    assert next(s for s in quota.quota_states(tenant) if s.quota_key == "key_streams").limit == 9
    bad = operator.post("/operator/tenants/new-lab/", {"action": "overrides", "override-key_streams": "lots"},
                        follow=True)
    assert "must be a whole number" in bad.content.decode()
    assert services.quota_overrides(tenant) == {"key_streams": 9, "ipsec_tunnels": -1}  # nothing lost
    dup = operator.post("/operator/tenants/", {"name": "Again", "slug": "new-lab", "plan": "test"})
    assert "already exists" in dup.content.decode()
    actions = list(AuditEvent.objects.for_tenant(tenant).values_list("action", flat=True).order_by("id"))
    assert actions == ["tenant.created", "tenant.plan_changed", "tenant.quota_overrides_changed"]


def test_suspension_refuses_the_tenants_token_at_once_and_resume_restores_it(operator, two_tenants):
    ca = two_tenants["ca"]
    assert ca.get("/api/quotas/").status_code == 200
    operator.post("/operator/tenants/alpha/", {"action": "suspend"})
    refused = ca.get("/api/quotas/")
    assert refused.status_code == 403 and "suspended" in refused.json()["error"]["message"]
    assert two_tenants["cb"].get("/api/quotas/").status_code == 200  # the other tenant is untouched
    operator.post("/operator/tenants/alpha/", {"action": "resume"})
    assert ca.get("/api/quotas/").status_code == 200


def test_members_are_listed_with_role_changes_and_removal(operator, two_tenants, member):
    bob2 = member(two_tenants["a"], "bob2", role="member")
    membership = Membership.objects.for_tenant(two_tenants["a"]).get(user=bob2)
    page = operator.get("/operator/tenants/alpha/").content.decode()
    assert "bob2" in page and "alice" in page
    operator.post("/operator/tenants/alpha/", {"action": "role", "membership": membership.pk, "role": "viewer"})
    membership.refresh_from_db()
    assert membership.role == "viewer"
    last_owner = Membership.objects.for_tenant(two_tenants["a"]).get(user=two_tenants["ua"])
    kept = operator.post("/operator/tenants/alpha/", {"action": "remove", "membership": last_owner.pk}, follow=True)
    assert "at least one owner" in kept.content.decode()
    operator.post("/operator/tenants/alpha/", {"action": "remove", "membership": membership.pk})
    assert not Membership.objects.for_tenant(two_tenants["a"]).filter(user=bob2).exists()


def test_plans_page_edits_limits_and_creates_plans(operator, plan):
    operator.post("/operator/plans/", {"plan": "test", "test-key_streams": "5", "test-ipsec_tunnels": "-1"})
    assert plan.limits()["key_streams"] == 5 and plan.limits()["ipsec_tunnels"] == -1
    operator.post("/operator/plans/", {"name": "Tiny", "slug": "tiny", "new-key_streams": "1"})
    assert Plan.objects.get(slug="tiny").limits()["key_streams"] == 1
    bad = operator.post("/operator/plans/", {"plan": "test", "test-key_streams": "-5"}, follow=True)
    assert "non-negative" in bad.content.decode() and plan.limits()["key_streams"] == 5
    assert {"plan.limits_changed", "plan.created"} <= set(AuditEvent.objects.unscoped().values_list("action",
                                                                                                   flat=True))


def test_network_page_cuts_and_restores_a_twin_link_and_adds_an_eavesdropper(operator, network):
    page = operator.get("/operator/network/").content.decode()
    assert 'data-link="cait-ccs"' in page and "KME endpoint" in page
    assert QkdNode.objects.get(node_id="CAIT").kme_url in page  # operator detail
    operator.post("/operator/network/links/cait-ccs/", {"action": "cut"})
    live = operator.get("/operator/network/live/").content.decode()
    assert 'data-link="cait-ccs" data-state="cut"' in live and "link is cut" in live  # drawn down, alarmed
    operator.post("/operator/network/links/cait-ccs/", {"action": "restore"})
    assert 'data-link="cait-ccs" data-state="up"' in operator.get("/operator/network/live/").content.decode()
    operator.post("/operator/network/links/cait-ccs/", {"action": "attack"})
    assert "eavesdropper" in operator.get("/operator/network/live/").content.decode()
    operator.post("/operator/network/links/cait-ccs/", {"action": "clear-attack"})
    unknown = operator.post("/operator/network/links/nowhere/", {"action": "cut"}, follow=True)
    assert "no link" in unknown.content.decode()
    actions = list(AuditEvent.objects.unscoped().filter(object_id="cait-ccs").values_list("action", flat=True)
                   .order_by("id"))
    assert actions == ["twin.link_cut", "twin.link_restored", "twin.eavesdropper_added",
                       "twin.eavesdropper_cleared"]


def test_operator_network_api_and_twin_admin_need_an_operator(network, two_tenants):
    assert two_tenants["ca"].get("/api/operator/network/").status_code == 403
    assert two_tenants["ca"].post("/api/operator/network/links/cait-ccs/cut").status_code == 403


def test_demo_totp_is_enrolled_and_printed_only_in_the_demo(db, monkeypatch, capsys):
    monkeypatch.delenv("QXAAS_DEMO", raising=False)
    assert bootstrap_demo().operator_totp is False
    assert not Authenticator.objects.filter(user__username="operator").exists()
    with pytest.raises(CommandError, match="QXAAS_DEMO"):
        call_command("demo_totp")
    monkeypatch.setenv("QXAAS_DEMO", "1")
    assert bootstrap_demo().operator_totp is True
    found = Authenticator.objects.get(user__username="operator", type=Authenticator.Type.TOTP)
    assert found.data[DEMO_TOTP_MARK] is True
    call_command("demo_totp")
    code = capsys.readouterr().out.strip()
    assert code.isdigit() and len(code) == 6 and code == demo_totp_code()[0]
    from allauth.mfa.totp.internal.auth import TOTP

    assert TOTP(found).validate_code(code)  # allauth itself accepts it


def test_demo_totp_is_refused_under_production_settings(db, monkeypatch, settings):
    monkeypatch.setenv("QXAAS_DEMO", "1")
    settings.QXAAS_PRODUCTION = True  # what portal.settings.production sets
    assert bootstrap_demo().operator_totp is False
    with pytest.raises(CommandError, match="production"):
        call_command("demo_totp")


def test_a_persons_own_totp_is_never_printed(db, monkeypatch, make_user):
    monkeypatch.setenv("QXAAS_DEMO", "1")
    person = make_user("operator", staff=True)
    Authenticator.objects.create(user=person, type=Authenticator.Type.TOTP, data={"secret": "theirs"})
    assert bootstrap_demo().operator_totp is False
    with pytest.raises(CommandError, match="no TOTP enrolled by the demo"):
        call_command("demo_totp")


def test_demo_totp_waits_for_a_code_that_stays_current(db, monkeypatch, capsys):
    import tenants.management.commands.demo_totp as command

    monkeypatch.setenv("QXAAS_DEMO", "1")
    bootstrap_demo()
    answers = iter([("111111", 2), ("222222", 30)])
    slept = []
    monkeypatch.setattr(command, "demo_totp_code", lambda user: next(answers))
    monkeypatch.setattr(command.time, "sleep", slept.append)
    call_command("demo_totp", "--min-valid", "20")
    assert capsys.readouterr().out.strip() == "222222" and slept == [2.5]
