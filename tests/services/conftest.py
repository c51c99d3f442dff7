"""Gateway fixtures: a real madqci twin (HTTPS, mTLS) registered as the portal's SD-QKD backend."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from services import registry
from tests.services import listener
from tests.tenants.conftest import client_for, make_tenant, make_user, member, plan  # noqa: F401 - fixtures
from tests.twin.conftest import RunningTwin, start_twin, twin_factory  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def backend_twin(tmp_path_factory) -> RunningTwin:
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
def make_lab(network, make_tenant, member, client_for):  # noqa: F811
    def make(slug: str) -> Lab:
        tenant = make_tenant(slug)
        owner = member(tenant, f"{slug}-owner")
        lab = Lab(tenant, owner, client_for(owner, tenant, ["keys:read", "keys:write", "billing:read"]))
        lab.add_sae(f"{slug}-cait", "CAIT")
        lab.add_sae(f"{slug}-rect", "Rectorado")
        return lab

    return make


@pytest.fixture
def https_portal(https_and_web):
    return https_and_web[0]


@pytest.fixture
def https_and_web(transactional_db, backend_twin, tmp_path):
    """The portal's HTTPS listener and the web listener behind it, on the test database (committed data)."""
    registry.register_twin(backend_twin.endpoints)
    with listener.https_portal(tmp_path) as (base, web, _log):
        yield base, web
