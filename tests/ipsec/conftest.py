"""IPsec fixtures: a real lab (one network namespace and one strongSwan charon per madqci node, veth links along
the QKD links) registered as the portal's gateways, and the real twin as the QKD network behind take_key.

Needs root and strongSwan; without them the tests skip (and fail under CI, tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipsec import lab as lab_module
from ipsec import services

NODES = ["CAIT", "CCS", "Rectorado"]
LINKS = [("CAIT", "CCS"), ("CCS", "Rectorado")]


@pytest.fixture(scope="session")
def ipsec_lab(tmp_path_factory):
    reason = lab_module.unavailable_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"qxt{os.getpid() % 100000}"
    built = lab_module.build(NODES, LINKS, prefix, Path(tmp_path_factory.mktemp("ipsec-lab")))
    yield built
    built.stop()
    assert not [ns for ns in lab_module.namespaces() if ns.startswith(f"{prefix}-")]


@pytest.fixture
def eager_celery():
    """Tasks run in the calling thread (the service functions they wrap, with Celery's own dispatch)."""
    from portal.celery_app import app

    before = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


@pytest.fixture
def gateways(ipsec_lab, network, settings, eager_celery):
    settings.IPSEC_MIN_REKEY_INTERVAL_S = 2
    for node in ipsec_lab.nodes:
        if not ipsec_lab.charon_alive(node):
            ipsec_lab.start_charon(node)
    registered = services.register_lab(ipsec_lab)
    yield registered
    # whatever a failed test left in the charons goes (the database rows are rolled back)
    for gw in registered:
        for name in lab_module_conns(gw.vici_uri):
            services.vici_driver.remove(gw.vici_uri, name)


def lab_module_conns(uri: str) -> set[str]:
    try:
        return services.vici_driver.list_conns(uri) | set(services.vici_driver.list_sas(uri))
    except services.vici_driver.GatewayUnavailable:
        return set()


@pytest.fixture
def tenant_api(gateways, make_tenant, member, client_for):
    def make(slug: str):
        tenant = make_tenant(slug)
        owner = member(tenant, f"{slug}-owner")
        return tenant, client_for(owner, tenant, ["tunnels:read", "tunnels:write", "keys:read", "keys:write",
                                                  "billing:read"])

    return make
