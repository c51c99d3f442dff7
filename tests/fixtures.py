"""The suite's shared fixtures (a pytest plugin, registered by ``tests/conftest.py``), for every app's tests:

- tenancy: ``plan`` (limits from ``plan_limits``, which a directory's conftest may override), ``make_tenant``,
  ``make_user``, ``member``, ``client_for`` (an API client with a fresh token), ``two_tenants``,
  ``default_plans``;
- the live lab: ``backend_twin`` (a real madqci twin over HTTPS with mutual TLS, one per session),
  ``network`` (registered as the portal's SD-QKD backend), ``make_lab`` (a tenant with an owner, an API client
  and SAEs at CAIT and Rectorado), ``https_and_web`` / ``https_portal`` (the key gateway and the web listener
  as ``make run`` starts them, on the test database), ``twin_factory`` (more twins, stopped after the test);
- concurrency: ``run_in_threads`` (N threads released together by a barrier, each with its own database
  connection).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.test import APIClient

from services import registry
from tenants.demo import ensure_default_plans
from tenants.models import Membership, Plan, Role, Tenant
from tenants.services import set_plan_limits
from tenants.tokens import issue_token
from tests.services import listener
from tests.twin.conftest import RunningTwin, start_twin

# --- tenancy ---------------------------------------------------------------------------------------------------
TEST_PLAN_LIMITS = {
    "qkd_key_bits.day": 10_000, "qkd_key_bits.month": 100_000, "entropy_bytes.day": 1_000_000,
    "entropy_bytes.month": -1, "ipsec_tunnels": 2, "tls_sessions": 2, "key_streams": 2,
}
DEFAULT_SCOPES = ["keys:read", "keys:write", "billing:read", "tenant:admin", "entropy:read"]


@pytest.fixture
def plan_limits() -> dict[str, int]:
    """The test plan's quota limits (override in a directory's conftest for other limits)."""
    return dict(TEST_PLAN_LIMITS)


@pytest.fixture
def plan(db, plan_limits) -> Plan:
    plan = Plan.objects.create(name="Test", slug="test")
    set_plan_limits(plan, plan_limits)
    return plan


@pytest.fixture
def make_tenant(plan) -> Callable[..., Tenant]:
    def make(slug: str, **kwargs: Any) -> Tenant:
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
    """A new user with a membership of ``tenant`` (role owner unless told)."""

    def make(tenant: Tenant, username: str, role: str = Role.OWNER):
        user = make_user(username)
        Membership.objects.create(tenant=tenant, user=user, role=role)
        return user

    return make


@pytest.fixture
def client_for():
    """An API client authenticated with a fresh token of ``user`` in ``tenant`` (``client.token_secret``)."""

    def make(user, tenant: Tenant, scopes: list[str] | None = None) -> APIClient:
        _, secret = issue_token(user, tenant, "test", scopes or DEFAULT_SCOPES)
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


# --- concurrency -----------------------------------------------------------------------------------------------
def run_in_threads(n: int, target: Callable[[int], Any], *, prepare: Callable[[int], Any] | None = None,
                   timeout: float = 60.0) -> list:
    """Run ``target(i)`` for i in 0..n-1 in ``n`` threads released together by a barrier, each thread with its
    own database connection (closed when it ends); the results in order of i.

    ``prepare(i)``, when given, runs in the thread before the barrier (e.g. a query that must not be part of the
    race) and ``target`` is then called with its result instead of ``i``. A worker's exception is raised here;
    a worker still running after ``timeout`` seconds fails the test (every join is bounded)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    done = [False] * n

    def worker(i: int) -> None:
        try:
            argument = prepare(i) if prepare is not None else i
            barrier.wait(timeout=30)
            results[i] = target(argument)
            done[i] = True
        except BaseException as exc:  # handed to the test's thread, raised there
            errors.append(exc)
            barrier.abort()  # the others do not wait for one that will never arrive
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    assert all(done), f"{done.count(False)} of {n} workers did not finish within {timeout} s"
    return results


# --- the live lab: the real twin as the portal's QKD network ------------------------------------------------------
@pytest.fixture
def twin_factory(tmp_path: Path) -> Iterator[Callable[..., RunningTwin]]:
    """Start twins (``twin_factory("mesh-8", time_scale=100)``); all are stopped after the test."""
    started: list[RunningTwin] = []

    def factory(topology: str = "madqci", **kwargs: Any) -> RunningTwin:
        twin = start_twin(tmp_path / f"twin-{len(started)}", topology, **kwargs)
        started.append(twin)
        return twin

    yield factory
    for twin in started:
        twin.stop()


@pytest.fixture(scope="session")
def backend_twin(tmp_path_factory) -> Iterator[RunningTwin]:
    twin = start_twin(tmp_path_factory.mktemp("gateway-twin") / "state", "madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=200)
    yield twin
    twin.stop()


@pytest.fixture
def network(db, backend_twin, settings):
    settings.QKD_AUTO_REGISTER_TWIN = False
    registry.forget_status_cache()
    registry.register_twin(backend_twin.endpoints)
    return backend_twin


class Lab:
    """A tenant with an owner, an API client and SAEs at CAIT and Rectorado."""

    def __init__(self, tenant, owner, client: APIClient) -> None:
        self.tenant, self.owner, self.client = tenant, owner, client
        self.bundles: dict[str, dict] = {}

    def add_sae(self, name: str, node: str) -> dict:
        response = self.client.post("/api/saes/", {"name": name, "node": node}, format="json")
        assert response.status_code == 201, response.content
        self.bundles[name] = response.json()
        return self.bundles[name]

    def etsi(self, sae: str, method: str, path: str, **kwargs):
        call = getattr(self.client, method)
        return call(f"/api/v1/keys/{path}", HTTP_X_SAE_ID=sae, format="json", **kwargs)


@pytest.fixture
def make_lab(network, make_tenant, member, client_for):
    """``make_lab("acme")``: tenant ``acme``, its owner, a client (keys:read, keys:write, billing:read) and the
    SAEs ``acme-cait`` (CAIT) and ``acme-rect`` (Rectorado), on the live twin."""

    def make(slug: str) -> Lab:
        tenant = make_tenant(slug)
        owner = member(tenant, f"{slug}-owner")
        lab = Lab(tenant, owner, client_for(owner, tenant, ["keys:read", "keys:write", "billing:read"]))
        lab.add_sae(f"{slug}-cait", "CAIT")
        lab.add_sae(f"{slug}-rect", "Rectorado")
        return lab

    return make


@pytest.fixture
def https_and_web(transactional_db, backend_twin, tmp_path):
    """The portal's HTTPS listener and the web listener behind it, on the test database (committed data)."""
    registry.register_twin(backend_twin.endpoints)
    with listener.https_portal(tmp_path) as (base, web, _log):
        yield base, web


@pytest.fixture
def https_portal(https_and_web):
    return https_and_web[0]


def same_error(a, b) -> bool:
    """The same error body but for its request ID (each request has its own)."""
    def body(response):
        data = response.json()
        if isinstance(data.get("error"), dict):
            data["error"].pop("request_id", None)
        return data
    return body(a) == body(b)
