"""Security hardening (issue 13): each test names the finding it guards."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from django.test import Client
from rest_framework.test import APIClient

from portal.errors import Forbidden
from tenants.models import ApiToken, Membership, Role
from tenants.tokens import issue_token


def enrol_totp(user) -> None:
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={"secret": "x"})


# --- 1. staff must enrol TOTP for the API too ------------------------------------------------------------------

def test_staff_session_without_totp_cannot_use_the_api(two_tenants, make_user):
    staff = make_user("root", staff=True)
    browser = Client()
    browser.force_login(staff)  # signed in with a password only
    response = browser.get("/api/tenants/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "mfa_required"
    response = browser.post("/api/tokens/", {"name": "x", "scopes": ["operator"]}, content_type="application/json",
                            headers={"X-Tenant": "alpha"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "mfa_required"
    assert not ApiToken.objects.unscoped().filter(user=staff).exists()
    enrol_totp(staff)
    assert browser.get("/api/tenants/").status_code == 200


def test_operator_scope_needs_a_staff_user_with_totp(two_tenants, make_user):
    staff = make_user("root", staff=True)
    with pytest.raises(Forbidden):
        issue_token(staff, two_tenants["a"], "ops", ["operator"])
    enrol_totp(staff)
    token, _ = issue_token(staff, two_tenants["a"], "ops", ["operator"])
    assert token.scopes == ["operator"]


def test_staff_token_requests_are_not_gated_by_the_session_rule(make_user, make_tenant):
    staff = make_user("root", staff=True)
    home = make_tenant("home")
    Membership.objects.create(tenant=home, user=staff, role=Role.OWNER)
    _, secret = issue_token(staff, home, "ci", ["billing:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/quotas/").status_code == 200


# --- 2. a token cannot mint a token with more scopes than it holds ----------------------------------------------

def test_a_token_creates_only_tokens_within_its_own_scopes(two_tenants, client_for):
    admin_only = client_for(two_tenants["ua"], two_tenants["a"], ["tenant:admin"])
    response = admin_only.post("/api/tokens/", {"name": "x", "scopes": ["keys:write", "entropy:read"]}, format="json")
    assert response.status_code == 403, response.content
    assert "keys:write" in response.json()["error"]["message"]
    assert admin_only.post("/api/tokens/", {"name": "x", "scopes": ["tenant:admin"]},
                           format="json").status_code == 201
    assert [t.scopes for t in ApiToken.objects.for_tenant(two_tenants["a"]).filter(name="x")] == [["tenant:admin"]]


def test_no_token_grants_operator_through_the_api(make_user, make_tenant, client_for):
    staff = make_user("root", staff=True)
    enrol_totp(staff)
    home = make_tenant("home")
    Membership.objects.create(tenant=home, user=staff, role=Role.OWNER)
    ops = client_for(staff, home, ["operator", "tenant:admin"])
    response = ops.post("/api/tokens/", {"name": "y", "scopes": ["operator"]}, format="json")
    assert response.status_code == 403, response.content
    assert not ApiToken.objects.for_tenant(home).filter(name="y").exists()


# --- 3. a token's scopes never exceed its user's current role -----------------------------------------------------

def test_effective_scopes_follow_the_current_role_on_every_request(two_tenants, member, client_for):
    tenant = two_tenants["a"]
    mike = member(tenant, "mike", Role.MEMBER)
    client = client_for(mike, tenant, ["keys:read", "billing:read"])
    assert client.get("/api/saes/").status_code == 200
    Membership.objects.for_tenant(tenant).filter(user=mike).update(role=Role.VIEWER)  # behind the services' back
    response = client.get("/api/saes/")
    assert response.status_code == 403 and "keys:read" in response.json()["error"]["message"]
    assert client.get("/api/quotas/").status_code == 200  # billing:read is still a viewer's


def test_a_role_change_narrows_or_revokes_the_members_tokens(two_tenants, member, client_for):
    tenant, owner = two_tenants["a"], two_tenants["ca"]
    mike = member(tenant, "mike", Role.MEMBER)
    client_for(mike, tenant, ["keys:write", "entropy:read", "billing:read"])
    client_for(mike, tenant, ["keys:write"])
    membership = Membership.objects.for_tenant(tenant).get(user=mike)
    response = owner.patch(f"/api/members/{membership.pk}/", {"role": "viewer"}, format="json")
    assert response.status_code == 200, response.content
    held = {tuple(t.scopes): t.revoked_at for t in ApiToken.objects.for_tenant(tenant).filter(user=mike)}
    assert set(held) == {("billing:read",), ("keys:write",)}
    assert held[("billing:read",)] is None and held[("keys:write",)] is not None
    response = owner.delete(f"/api/members/{membership.pk}/")
    assert response.status_code == 204
    assert not ApiToken.objects.for_tenant(tenant).filter(user=mike, revoked_at__isnull=True).exists()


# --- 10. token and member endpoints check scopes; members join by accepting an invitation ---------------------------

def test_listing_or_revoking_others_tokens_needs_tenant_admin(two_tenants, member, client_for):
    tenant, alice = two_tenants["a"], two_tenants["ua"]
    mike = member(tenant, "mike", Role.MEMBER)
    client_for(mike, tenant, ["keys:read"])
    mikes = ApiToken.objects.for_tenant(tenant).get(user=mike)
    billing = client_for(alice, tenant, ["billing:read"])  # the owner's token, without tenant:admin
    listed = {t["user"] for t in billing.get("/api/tokens/").json()["results"]}
    assert listed == {"alice"}
    assert billing.delete(f"/api/tokens/{mikes.pk}/").status_code == 404
    assert billing.post(f"/api/tokens/{mikes.pk}/revoke/").status_code == 404
    assert ApiToken.objects.for_tenant(tenant).get(pk=mikes.pk).revoked_at is None
    admin = client_for(alice, tenant, ["tenant:admin"])
    assert {t["user"] for t in admin.get("/api/tokens/").json()["results"]} == {"alice", "mike"}
    assert admin.post(f"/api/tokens/{mikes.pk}/revoke/").status_code == 200


def test_members_join_only_by_accepting_an_invitation_and_emails_are_not_revealed(two_tenants, make_user):
    owner, tenant = two_tenants["ca"], two_tenants["a"]
    carol = make_user("carol")
    response = owner.post("/api/members/", {"username": "carol", "role": "viewer"}, format="json")
    assert response.status_code == 405  # no more adding people without their consent
    response = owner.post("/api/invitations/", {"username": "carol", "role": "viewer"}, format="json")
    assert response.status_code == 201, response.content
    assert "carol@example.org" not in response.content.decode()
    invitation_id = response.json()["id"]
    # an unknown handle answers the same way: the API does not tell who has an account
    ghost = owner.post("/api/invitations/", {"email": "nobody@example.org"}, format="json")
    assert ghost.status_code == 201 and set(ghost.json()) == set(response.json())
    assert "carol@example.org" not in owner.get("/api/invitations/").content.decode()
    assert not Membership.objects.for_tenant(tenant).filter(user=carol).exists()

    bob = Client()
    bob.force_login(two_tenants["ub"])
    assert bob.post(f"/api/me/invitations/{invitation_id}/accept/").status_code == 404  # not bob's
    browser = Client()
    browser.force_login(carol)
    page = browser.get("/invitations/").content.decode()
    assert "Alpha" in page and "viewer" in page
    assert browser.post("/invitations/", {"accept": str(invitation_id)}).status_code == 302
    assert Membership.objects.for_tenant(tenant).get(user=carol).role == Role.VIEWER
    assert browser.post(f"/api/me/invitations/{invitation_id}/accept/").status_code == 404  # used once


def test_an_invitation_is_accepted_with_a_session_not_a_token(two_tenants, make_user, make_tenant, client_for):
    carol = make_user("carol")
    home = make_tenant("home")
    Membership.objects.create(tenant=home, user=carol, role=Role.OWNER)
    response = two_tenants["ca"].post("/api/invitations/", {"username": "carol"}, format="json")
    invitation_id = response.json()["id"]
    carols_token = client_for(carol, home, ["tenant:admin"])
    assert carols_token.post(f"/api/me/invitations/{invitation_id}/accept/").status_code == 403
    browser = Client()
    browser.force_login(carol)
    listed = browser.get("/api/me/invitations/").json()
    assert [i["tenant"] for i in listed] == ["alpha"]
    assert browser.post(f"/api/me/invitations/{invitation_id}/decline/").status_code == 200
    assert not Membership.objects.for_tenant(two_tenants["a"]).filter(user=carol).exists()
