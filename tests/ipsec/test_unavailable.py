"""Without gateways (no root, no strongSwan, nothing registered) IPsec says why and how to fix it."""

from __future__ import annotations

import pytest

from ipsec import lab


def test_without_gateways_the_api_answers_503_with_the_reason(make_tenant, member, client_for):
    tenant = make_tenant("upm")
    client = client_for(member(tenant, "owner"), tenant, ["tunnels:read", "tunnels:write"])
    response = client.post("/api/tunnels/", {"node_a": "CAIT", "node_b": "Rectorado", "subnet_a": "10.100.1.0/24",
                                             "subnet_b": "10.102.1.0/24"}, format="json")
    assert response.status_code == 503
    assert "no IPsec gateway is registered" in response.json()["error"]["message"]
    assert client.get("/api/tunnels/").status_code == 200


def test_the_lab_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(lab.os, "geteuid", lambda: 1000)
    assert "needs root" in lab.unavailable_reason() and "apt-get install" in lab.unavailable_reason()


@pytest.mark.parametrize("path", [[("A", "B"), ("B", "C")]])
def test_shortest_path_goes_through_the_trusted_node(path):
    assert lab.shortest_path(path, "A", "C") == ["A", "B", "C"]


def test_the_page_and_readyz_say_why_ipsec_is_unavailable(client, make_tenant, member):
    tenant = make_tenant("upm")
    client.force_login(member(tenant, "owner"))
    page = client.get("/tunnels/")
    assert page.status_code == 200 and b"IPsec is unavailable" in page.content and b"/api/tunnels/" in page.content
    from django.conf import settings

    ready = client.get("/readyz", HTTP_AUTHORIZATION=f"Bearer {settings.HEALTH_TOKEN}").json()  # operators' detail
    assert ready["checks"]["ipsec"]["backend"].startswith("unavailable: no IPsec gateway is registered")
