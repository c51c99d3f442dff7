"""API tokens: format, keyed hashing, pepper rotation, expiry, revocation, scopes, last_used."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.errors import BadRequest, Forbidden
from tenants import tokens
from tenants.models import ApiToken, Role


def test_token_format_and_only_a_keyed_hash_is_stored(two_tenants):
    token, secret = tokens.issue_token(two_tenants["ua"], two_tenants["a"], "ci", ["billing:read"])
    assert tokens.TOKEN_RE.match(secret)
    assert secret.startswith(f"qx_{token.key}.")
    stored = ApiToken.objects.for_tenant(two_tenants["a"]).get(pk=token.pk)
    raw_secret = secret.split(".", 1)[1]
    assert raw_secret not in stored.secret_hash
    assert stored.secret_hash != hashlib.sha256(raw_secret.encode()).hexdigest()  # keyed, not a plain digest
    pepper = tokens.settings.API_TOKEN_PEPPERS[stored.pepper_id].encode()
    assert stored.secret_hash == hmac.new(pepper, raw_secret.encode(), hashlib.sha256).hexdigest()
    assert tokens.verify_token(secret).pk == token.pk


def test_wrong_secret_unknown_key_and_garbage_are_rejected(two_tenants):
    _, secret = tokens.issue_token(two_tenants["ua"], two_tenants["a"], "ci", ["billing:read"])
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for raw in (tampered, f"qx_000000000000.{secret.split('.')[1]}", "qx_short", "", "Bearer x"):
        with pytest.raises(tokens.InvalidToken):
            tokens.verify_token(raw)


def test_pepper_rotation_keeps_old_tokens_valid(two_tenants, settings):
    settings.API_TOKEN_PEPPERS = {1: "old-pepper"}
    old, old_secret = tokens.issue_token(two_tenants["ua"], two_tenants["a"], "old", ["billing:read"])
    settings.API_TOKEN_PEPPERS = {1: "old-pepper", 2: "new-pepper"}
    new, new_secret = tokens.issue_token(two_tenants["ua"], two_tenants["a"], "new", ["billing:read"])
    assert (old.pepper_id, new.pepper_id) == (1, 2)
    assert tokens.verify_token(old_secret).pk == old.pk
    assert tokens.verify_token(new_secret).pk == new.pk
    settings.API_TOKEN_PEPPERS = {2: "new-pepper"}  # retiring a pepper retires its tokens
    with pytest.raises(tokens.InvalidToken):
        tokens.verify_token(old_secret)


def test_expiry_and_revocation(two_tenants):
    user, tenant = two_tenants["ua"], two_tenants["a"]
    token, secret = tokens.issue_token(user, tenant, "short", ["billing:read"],
                                       expires_at=timezone.now() + timedelta(hours=1))
    ApiToken.objects.for_tenant(tenant).filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(tokens.InvalidToken, match="expired"):
        tokens.verify_token(secret)
    assert tokens.expire_tokens() == 1
    token2, secret2 = tokens.issue_token(user, tenant, "t2", ["billing:read"])
    tokens.revoke_token(token2)
    with pytest.raises(tokens.InvalidToken, match="revoked"):
        tokens.verify_token(secret2)
    with pytest.raises(BadRequest, match="future"):
        tokens.issue_token(user, tenant, "past", ["billing:read"], expires_at=timezone.now() - timedelta(1))


def test_scopes_are_capped_by_role(two_tenants, member):
    tenant = two_tenants["a"]
    viewer = member(tenant, "victor", Role.VIEWER)
    with pytest.raises(Forbidden, match="keys:write"):
        tokens.issue_token(viewer, tenant, "x", ["keys:write"])
    tokens.issue_token(viewer, tenant, "x", ["billing:read"])
    with pytest.raises(Forbidden, match="operator"):
        tokens.issue_token(two_tenants["ua"], tenant, "x", ["operator"])
    with pytest.raises(BadRequest, match="unknown scopes"):
        tokens.issue_token(two_tenants["ua"], tenant, "x", ["keys:everything"])
    with pytest.raises(Forbidden):  # not a member of bravo at all
        tokens.issue_token(two_tenants["ua"], two_tenants["b"], "x", ["billing:read"])


def test_last_used_is_written_at_most_once_a_minute(two_tenants, django_assert_num_queries):
    token, secret = tokens.issue_token(two_tenants["ua"], two_tenants["a"], "t", ["billing:read"])
    first = tokens.verify_token(secret).last_used_at
    assert first is not None
    with django_assert_num_queries(1):  # the lookup only, no write
        assert tokens.verify_token(secret).last_used_at == first
    ApiToken.objects.for_tenant(two_tenants["a"]).filter(pk=token.pk).update(
        last_used_at=timezone.now() - timedelta(minutes=2))
    assert tokens.verify_token(secret).last_used_at > first


def test_api_scope_enforcement(two_tenants, client_for):
    client = client_for(two_tenants["ua"], two_tenants["a"], scopes=["keys:read"])
    response = client.get("/api/quotas/")
    assert response.status_code == 403
    assert response.json()["error"]["details"] == {"required_scope": "billing:read"}
    reader = client_for(two_tenants["ua"], two_tenants["a"], scopes=["billing:read"])
    assert reader.get("/api/quotas/").status_code == 200


def test_revoked_or_expired_token_gets_401_through_the_api(two_tenants, client_for):
    client = two_tenants["ca"]
    assert client.get("/api/me/").status_code == 200
    token = tokens.verify_token(client.token_secret)
    tokens.revoke_token(token)
    response = client.get("/api/me/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "authentication_failed"
    # expired (not revoked): the same 401
    expiring = client_for(two_tenants["ua"], two_tenants["a"], ["billing:read"])
    assert expiring.get("/api/me/").status_code == 200
    ApiToken.objects.for_tenant(two_tenants["a"]).filter(pk=tokens.verify_token(expiring.token_secret).pk).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    response = expiring.get("/api/me/")
    assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"
    assert ApiToken.objects.for_tenant(two_tenants["a"]).get(name="test", revoked_at__isnull=True,
                                                           expires_at__isnull=False)  # expired, not revoked


def test_token_of_a_removed_member_stops_working(two_tenants):
    from tenants.models import Membership

    Membership.objects.for_tenant(two_tenants["a"]).filter(user=two_tenants["ua"]).delete()
    assert two_tenants["ca"].get("/api/quotas/").status_code == 403


def test_create_token_through_the_api_shows_the_secret_once(two_tenants):
    client = two_tenants["ca"]
    response = client.post("/api/tokens/", {"name": "script", "scopes": ["billing:read"]}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["token"].startswith(body["prefix"] + ".")
    assert response["Cache-Control"] == "no-store"
    listed = client.get(f"/api/tokens/{body['id']}/").json()
    assert "token" not in listed and "secret_hash" not in listed
    assert client.post(f"/api/tokens/{body['id']}/revoke/").json()["revoked_at"] is not None
