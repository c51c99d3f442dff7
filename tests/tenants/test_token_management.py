"""Who may revoke whose token, and the exact edges of token time rules (found untested by `make mutate`)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from portal.errors import BadRequest
from tenants import tokens
from tenants.models import ApiToken, Membership, Role

NOW = timezone.now().replace(microsecond=654_321)


@pytest.fixture
def team(make_tenant, member, make_user):
    """One tenant: an owner, an admin, two members (created in this order: pks ascend) and a staff operator."""
    tenant = make_tenant("team")
    people = {name: member(tenant, name, getattr(Role, role.upper()))
              for name, role in (("olga", "owner"), ("adam", "admin"))}
    people["mia"] = member(tenant, "mia", Role.MEMBER)
    people["max"] = member(tenant, "max", Role.MEMBER)
    people["staff"] = make_user("sam", staff=True)
    return tenant, people


def test_only_the_tokens_user_a_managing_role_or_staff_may_manage_it(team):
    tenant, p = team
    token, _ = tokens.issue_token(p["mia"], tenant, "mias", ["keys:read"])
    assert tokens.can_manage_token(p["mia"], token, Role.MEMBER)
    assert p["max"].pk > p["mia"].pk and p["adam"].pk < p["mia"].pk
    assert not tokens.can_manage_token(p["max"], token, Role.MEMBER)  # another member, higher pk
    assert not tokens.can_manage_token(p["adam"], token, Role.VIEWER)  # lower pk, no managing role
    assert not tokens.can_manage_token(p["max"], token, None)  # not a member at all
    assert tokens.can_manage_token(p["adam"], token, Role.ADMIN)
    assert tokens.can_manage_token(p["olga"], token, Role.OWNER)
    assert tokens.can_manage_token(p["staff"], token, None)


def revoke_on_the_page(user, token) -> bool:
    browser = Client()
    browser.force_login(user)
    browser.post("/tokens/", {"revoke": str(token.pk)})
    return ApiToken.objects.for_tenant(token.tenant).get(pk=token.pk).revoked_at is not None


def test_on_the_tokens_page_a_member_cannot_revoke_another_members_token(team):
    tenant, p = team
    token, _ = tokens.issue_token(p["mia"], tenant, "mias", ["keys:read"])
    assert not revoke_on_the_page(p["max"], token)
    assert revoke_on_the_page(p["mia"], token)
    other, _ = tokens.issue_token(p["mia"], tenant, "mias-2", ["keys:read"])
    assert revoke_on_the_page(p["adam"], other)


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr(tokens, "timezone", SimpleNamespace(now=lambda: NOW))
    return NOW


def test_a_token_cannot_be_issued_already_expired_to_the_microsecond(team, frozen):
    tenant, p = team
    with pytest.raises(BadRequest, match="future"):
        tokens.issue_token(p["mia"], tenant, "now", ["keys:read"], expires_at=NOW)
    token, _ = tokens.issue_token(p["mia"], tenant, "soon", ["keys:read"], expires_at=NOW + timedelta(microseconds=1))
    assert token.expires_at == NOW + timedelta(microseconds=1)


def test_last_used_is_rewritten_exactly_a_minute_after_the_last_write(team, frozen):
    tenant, p = team
    token, secret = tokens.issue_token(p["mia"], tenant, "t", ["keys:read"])
    ApiToken.objects.for_tenant(tenant).filter(pk=token.pk).update(
        last_used_at=NOW - timedelta(minutes=1) + timedelta(microseconds=1))
    assert tokens.verify_token(secret).last_used_at == NOW - timedelta(minutes=1) + timedelta(microseconds=1)
    ApiToken.objects.for_tenant(tenant).filter(pk=token.pk).update(last_used_at=NOW - timedelta(minutes=1))
    assert tokens.verify_token(secret).last_used_at == NOW
    assert ApiToken.objects.for_tenant(tenant).get(pk=token.pk).last_used_at == NOW


def test_a_user_with_a_large_id_manages_their_own_token(team):
    """Ids above CPython's small-int cache: identity (``is``) is not equality for them."""
    tenant, _p = team
    user = get_user_model().objects.create_user("big", "big@example.org", "pw-bigbig", id=10**6 + 7)
    Membership.objects.create(tenant=tenant, user=user, role=Role.MEMBER)
    token, _ = tokens.issue_token(user, tenant, "big", ["keys:read"])
    token = ApiToken.objects.for_tenant(tenant).get(pk=token.pk)  # user_id and pk read back as separate ints
    fresh_user = get_user_model().objects.get(pk=user.pk)
    assert tokens.can_manage_token(fresh_user, token, Role.MEMBER)
