"""/metrics: who may scrape it, and the series it shows during a live run on the real twin."""

from __future__ import annotations

import pytest
from django.test import Client

from portal import metrics
from tenants import quota

from .conftest import parse, scrape


@pytest.mark.django_db
def test_metrics_are_refused_to_other_addresses_and_proxied_requests(settings):
    client = Client()
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="192.0.2.10")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    # Through a proxy on the same host the address is the proxy's: only the token counts.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.10").status_code == 403
    settings.METRICS_TOKEN = "scraper-secret-0123456789"
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.10",
                      HTTP_AUTHORIZATION="Bearer scraper-secret-0123456789").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.10", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    settings.METRICS_ALLOWED_NETWORKS = ["192.0.2.0/24"]
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.10").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_access_rule_handles_odd_addresses(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    assert metrics.scrape_allowed("::ffff:127.0.0.1", None, proxied=False)
    assert not metrics.scrape_allowed("not-an-address", None, proxied=False)
    assert not metrics.scrape_allowed(None, None, proxied=False)
    assert not metrics.scrape_allowed("127.0.0.1", "Bearer ", proxied=True)  # no token configured: never


def one(samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_live_scrape_has_link_tenant_http_and_order_series(own_twin, make_tenant, member, client_for):
    tenant = make_tenant("metrics-lab")
    owner = member(tenant, "metrics-owner")
    api = client_for(owner, tenant)
    for name, node in (("m-cait", "CAIT"), ("m-rect", "Rectorado")):
        assert api.post("/api/saes/", {"name": name, "node": node}, format="json").status_code == 201
    for _ in range(3):
        r = api.post("/api/v1/keys/m-rect/enc_keys", {"number": 2, "size": 256}, format="json", HTTP_X_SAE_ID="m-cait")
        assert r.status_code == 200, r.content
    assert api.get("/api/entropy?bytes=64&format=hex").status_code in (200, 503)  # metered only when served

    samples = parse(scrape(Client()))
    # Per link, from the twin, with the node that reported it.
    nodes = sorted(own_twin.endpoints["nodes"])
    assert all(one(samples, "qxaas_kme_up", node=n) == 1.0 for n in nodes)
    links = {lab["link"] for lab, _ in samples["qkd_link_up"]}
    assert "cait-ccs" in links and "ccs-rectorado" in links
    assert len(samples["qkd_link_up"]) == len(links)  # each link once, although every node reports it
    assert all(lab["node"] in nodes for lab, _ in samples["qkd_link_up"])
    assert one(samples, "qkd_link_up", link="cait-ccs") == 1.0
    rate = one(samples, "qkd_link_secret_key_rate_bps", link="cait-ccs")
    qber = one(samples, "qkd_link_qber", link="cait-ccs")
    assert 0 < rate < 1e9 and 0 <= qber < 0.11
    fill = one(samples, "qkd_link_key_store_fill_bits", link="cait-ccs")
    assert 0 < fill <= one(samples, "qkd_link_key_store_capacity_bits", link="cait-ccs")
    # Per tenant: exactly what the quota service counts.
    used = next(s.used for s in quota.quota_states(tenant) if s.quota_key == "qkd_key_bits.day")
    assert used == 3 * 2 * 256
    assert one(samples, "qxaas_tenant_quota_used", tenant="metrics-lab", quota="qkd_key_bits.day") == used
    assert one(samples, "qxaas_tenant_quota_limit", tenant="metrics-lab", quota="qkd_key_bits.day") == 10_000
    assert one(samples, "qxaas_tenant_quota_used", tenant="metrics-lab", quota="key_streams") == 0
    # Orders by kind and state: every live state of every registered kind has a series.
    assert one(samples, "qxaas_service_orders", kind="key_stream", state="connected") >= 0
    # HTTP requests by URL pattern, never by path (no key IDs, no SAE names in labels).
    enc = [(lab, v) for lab, v in samples["qxaas_http_requests_total"] if "enc_keys" in lab["route"]]
    assert enc and all(lab["group"] == "key_delivery" and "m-rect" not in lab["route"] for lab, _ in enc)
    assert sum(v for lab, v in enc if lab["status"] == "200") >= 3
    assert samples["qxaas_http_request_duration_seconds_count"]
    assert all(v == 1.0 for _, v in samples["qxaas_metrics_collector_up"])
