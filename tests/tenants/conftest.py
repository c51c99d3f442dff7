from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tenants.demo import ensure_default_plans
from tenants.models import Membership, Plan, Role, Tenant
from tenants.services import set_plan_limits
from tenants.tokens import issue_token


@pytest.fixture
def plan(db) -> Plan:
    plan = Plan.objects.create(name="Test", slug="test")
    set_plan_limits(plan, {
        "qkd_key_bits.day": 10_000, "qkd_key_bits.month": 100_000, "entropy_bytes.day": 1_000_000,
        "entropy_bytes.month": -1, "ipsec_tunnels": 2, "tls_sessions": 2, "key_streams": 2,
    })
    return plan


@pytest.fixture
def make_tenant(plan) -> Callable[..., Tenant]:
    def make(slug: str, **kwargs) -> Tenant:
        return Tenant.objects.create(name=slug.title(), slug=slug, plan=kwargs.pop("plan", plan), **kwargs)

    return make


@pytest.fixture
def make_user(db):
    def make(username: str, staff: bool = False):
        return get_user_model().objects.create_user(username, f"{username}@example.org", "pw-" + username * 2,
                                                    is_staff=staff)

    return make


@pytest.fixture
def member(make_user):
    def make(tenant: Tenant, username: str, role: str = Role.OWNER):
        user = make_user(username)
        Membership.objects.create(tenant=tenant, user=user, role=role)
        return user

    return make


@pytest.fixture
def client_for():
    """An API client authenticated with a fresh token of ``user`` in ``tenant``."""

    def make(user, tenant: Tenant, scopes: list[str] | None = None) -> APIClient:
        scopes = scopes or ["keys:read", "keys:write", "billing:read", "tenant:admin", "entropy:read"]
        _, secret = issue_token(user, tenant, "test", scopes)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        client.token_secret = secret
        return client

    return make


@pytest.fixture
def two_tenants(make_tenant, member, client_for):
    """Tenant A and tenant B, each with an owner and an API client."""
    a, b = make_tenant("alpha"), make_tenant("bravo")
    ua, ub = member(a, "alice"), member(b, "bob")
    return {"a": a, "b": b, "ua": ua, "ub": ub, "ca": client_for(ua, a), "cb": client_for(ub, b)}


@pytest.fixture
def default_plans(db):
    ensure_default_plans()
