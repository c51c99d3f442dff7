"""The API surface: error format, rate limits, operators' endpoints, members, schema, deploy check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from tenants import ratelimit
from tenants.models import Membership, Plan, Role, Tenant
from tests.conftest import uses_postgres

ROOT = Path(__file__).resolve().parents[2]


def error(response) -> dict:
    return response.json()["error"]


# --- one error format, no 500 for malformed input ---------------------------------------------------------

def test_malformed_json_is_a_400_in_the_common_format(two_tenants):
    response = two_tenants["ca"].post("/api/tokens/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert error(response)["code"] == "malformed_request"


@pytest.mark.parametrize("payload", [
    {}, {"name": "x"}, {"name": "x", "scopes": []}, {"name": "x", "scopes": ["nope"]},
    {"name": "x", "scopes": "keys:read"}, {"name": "x", "scopes": ["billing:read"], "expires_at": "soon"},
    [1, 2, 3], "string",
])
def test_bad_token_requests_say_what_to_fix(two_tenants, payload):
    response = two_tenants["ca"].post("/api/tokens/", payload, format="json")
    assert response.status_code == 400, response.content
    assert error(response)["message"]


@pytest.mark.parametrize("query", ["meter=coffee", "since=yesterday", "until=2026-13-45T99:00"])
def test_bad_usage_filters_are_400(two_tenants, query):
    response = two_tenants["ca"].get(f"/api/usage/?{query}")
    assert response.status_code == 400 and error(response)["code"] == "bad_request"


def test_unauthenticated_and_wrong_method(two_tenants):
    response = APIClient().get("/api/quotas/")
    assert response.status_code == 401 and error(response)["code"] == "not_authenticated"
    response = two_tenants["ca"].put("/api/quotas/", {}, format="json")
    assert response.status_code == 405 and error(response)["code"] == "method_not_allowed"


# --- rate limits ---------------------------------------------------------------------------------------------

def test_rate_limit_429_with_retry_after_and_headers(two_tenants, settings):
    settings.API_RATE_LIMIT_PER_SECOND, settings.API_RATE_LIMIT_BURST = 0.5, 3
    ratelimit.limiter.cache_clear()
    try:
        client = two_tenants["ca"]
        remaining = [client.get("/api/me/")["X-RateLimit-Remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        response = client.get("/api/me/")
        assert response.status_code == 429
        assert error(response)["code"] == "rate_limited"
        assert int(response["Retry-After"]) >= 1
        assert response["RateLimit-Policy"] == '"requests";q=3;w=6'
        # another token has its own bucket
        assert two_tenants["cb"].get("/api/me/").status_code == 200
    finally:
        ratelimit.limiter.cache_clear()


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a Redis server (REDIS_URL)")
def test_redis_token_bucket_is_shared_and_refills():
    bucket = ratelimit.RedisTokenBucket(os.environ["REDIS_URL"])
    key = f"test-{os.getpid()}"
    results = [bucket.take(key, rate=1.0, burst=2, now=1000.0) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert results[2].retry_after == pytest.approx(1.0)
    other_process_view = ratelimit.RedisTokenBucket(os.environ["REDIS_URL"])
    assert not other_process_view.take(key, rate=1.0, burst=2, now=1000.5).allowed
    assert other_process_view.take(key, rate=1.0, burst=2, now=1002.0).allowed


def test_local_token_bucket_refills():
    bucket = ratelimit.LocalTokenBucket()
    assert [bucket.take("k", 2.0, 2, now=0).allowed for _ in range(3)] == [True, True, False]
    assert bucket.take("k", 2.0, 2, now=0.5).allowed


# --- operators -----------------------------------------------------------------------------------------------

@pytest.fixture
def operator_client(make_user, make_tenant, client_for):
    op = make_user("ops", staff=True)
    from allauth.mfa.models import Authenticator

    Authenticator.objects.create(user=op, type=Authenticator.Type.TOTP, data={"secret": "x"})  # operators enrol
    home = make_tenant("ops-home")
    Membership.objects.create(tenant=home, user=op, role=Role.OWNER)
    return client_for(op, home, scopes=["operator", "billing:read"])


def test_operator_manages_tenants_and_plans(operator_client, two_tenants):
    response = operator_client.post("/api/plans/", {"name": "Gold", "slug": "gold", "limits": {
        "qkd_key_bits.day": 5, "key_streams": -1}}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["limits"]["qkd_key_bits.day"] == 5
    assert response.json()["limits"]["entropy_bytes.day"] == 0
    response = operator_client.post("/api/tenants/", {"name": "New", "slug": "new", "plan": "gold",
                                                      "quota_overrides": {"key_streams": 3}}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["quota_overrides"] == {"key_streams": 3}
    duplicate = operator_client.post("/api/tenants/", {"name": "Dup", "slug": "new", "plan": "gold"}, format="json")
    assert duplicate.status_code == 400 and "slug" in duplicate.json()["error"]["details"], duplicate.content
    assert len(operator_client.get("/api/tenants/").json()["results"]) == 4
    assert operator_client.post("/api/tenants/alpha/suspend/").json()["status"] == "suspended"
    assert two_tenants["ca"].get("/api/quotas/").status_code == 403
    assert operator_client.post("/api/tenants/alpha/activate/").json()["status"] == "active"
    assert operator_client.post("/api/plans/", {"name": "Bad", "slug": "bad", "limits": {"bogus": 1}},
                                format="json").status_code == 400


def test_members_cannot_use_operator_endpoints(two_tenants):
    client = two_tenants["ca"]
    assert client.post("/api/tenants/", {"name": "x", "slug": "x", "plan": "test"}, format="json").status_code == 403
    assert client.get("/api/plans/").status_code == 403
    assert client.post("/api/tenants/alpha/suspend/").status_code == 403
    assert Tenant.objects.get(slug="alpha").status == "active"


def test_staff_token_without_operator_scope_is_not_an_operator(make_user, make_tenant, client_for):
    op = make_user("ops2", staff=True)
    home = make_tenant("home2")
    Membership.objects.create(tenant=home, user=op, role=Role.OWNER)
    assert client_for(op, home, scopes=["billing:read"]).get("/api/plans/").status_code == 403


# --- members and roles -------------------------------------------------------------------------------------------

def test_owner_invites_and_manages_members(two_tenants, make_user, client_for):
    from django.test import Client

    client, tenant = two_tenants["ca"], two_tenants["a"]
    carol = make_user("carol")
    response = client.post("/api/invitations/", {"username": "carol", "role": "viewer"}, format="json")
    assert response.status_code == 201, response.content
    assert client.post("/api/invitations/", {"username": "carol"}, format="json").status_code == 409  # pending
    assert client.post("/api/invitations/", {"role": "viewer"}, format="json").status_code == 400
    browser = Client()
    browser.force_login(carol)
    assert browser.post(f"/api/me/invitations/{response.json()['id']}/accept/").status_code == 200
    carol_id = Membership.objects.for_tenant(tenant).get(user=carol).pk
    assert client.patch(f"/api/members/{carol_id}/", {"role": "admin"}, format="json").json()["role"] == "admin"
    owner = Membership.objects.for_tenant(tenant).get(role="owner")
    response = client.patch(f"/api/members/{owner.pk}/", {"role": "member"}, format="json")
    assert response.status_code == 409 and "at least one owner" in error(response)["message"]
    assert client.delete(f"/api/members/{carol_id}/").status_code == 204


def test_viewer_and_member_cannot_manage_members(two_tenants, member, client_for):
    tenant = two_tenants["a"]
    viewer = member(tenant, "vera", Role.VIEWER)
    plain = member(tenant, "mike", Role.MEMBER)
    for user, scopes in ((viewer, ["billing:read"]), (plain, ["billing:read", "keys:read"])):
        response = client_for(user, tenant, scopes).post("/api/invitations/", {"username": "alice"}, format="json")
        assert response.status_code == 403


# --- schema, deploy check -------------------------------------------------------------------------------------------

def test_openapi_schema_is_valid_and_documents_every_endpoint(two_tenants):
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate(schema)
    paths = schema["paths"]
    for expected in ("/api/me/", "/api/quotas/", "/api/tokens/", "/api/usage/", "/api/usage/export/",
                     "/api/tenants/", "/api/plans/", "/api/members/"):
        assert any(p.rstrip("/") == expected.rstrip("/") for p in paths), expected
    for p, ops in paths.items():
        for method, op in ops.items():
            if method in ("get", "post", "put", "patch", "delete"):
                assert op.get("summary") or op.get("description"), f"{method.upper()} {p} is undocumented"
    assert "bearerAuth" in str(schema["components"].get("securitySchemes", {})) or \
        "Bearer" in str(schema["components"].get("securitySchemes", {}))


def test_docs_are_served_without_a_cdn():
    client = APIClient()
    for url in ("/api/docs/", "/api/redoc/"):
        html = client.get(url).content.decode()
        assert "cdn.jsdelivr" not in html and "unpkg.com" not in html
        assert "/static/drf_spectacular_sidecar/" in html


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings.production",
           "SECRET_KEY": "x" * 20 + "a-real-secret-key-of-enough-entropy-0123456789",
           "API_TOKEN_PEPPERS": "1:" + "p" * 40, "KEY_ID_SECRETS": "1:" + "k" * 40, "QXAAS_VAR_DIR": str(tmp_path),
           "ALLOWED_HOSTS": "qxaas.example.org"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "API_TOKEN_PEPPERS")}
    env.update(DJANGO_SETTINGS_MODULE="portal.settings.production", QXAAS_VAR_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


@pytest.mark.skipif(not uses_postgres(), reason="runs on PostgreSQL in the main suite")
def test_database_is_postgres_when_configured():
    from django.db import connection

    assert connection.vendor == "postgresql"


def test_plan_limits_helper(db):
    plan = Plan.objects.create(name="Empty", slug="empty")
    assert set(plan.limits().values()) == {0}
