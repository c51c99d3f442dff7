"""The network view (API and web page) and registering an SAE from the web page."""

from __future__ import annotations

import re

from django.test import Client

from services.models import Sae


def test_network_api_shows_links_with_live_state(make_lab):
    lab = make_lab("upm")
    view = lab.client.get("/api/qkd/network/").json()
    assert view["simulated"] is True and view["telemetry"] is True
    assert {n["id"] for n in view["nodes"]} == {"CAIT", "CCS", "Rectorado"}
    links = {link["id"]: link for link in view["links"]}
    assert set(links) == {"cait-ccs", "ccs-rectorado"}
    assert links["ccs-rectorado"]["secret_key_rate_bps"] > 0 and 0 < links["ccs-rectorado"]["qber"] < 0.05
    assert "kme_url" not in view["nodes"][0]  # internal addresses are for operators only
    # madqci makes key with the protocol simulation: per-block telemetry reaches tenants
    protocol = links["ccs-rectorado"]["protocol"]
    assert links["ccs-rectorado"]["mode"] == "protocol" and protocol["mode"] == "protocol"
    assert protocol["attack_active"] is False and set(protocol["aborted_blocks"]) == {"protocol", "statistical"}


def test_services_page_registers_an_sae_and_shows_the_bundle_once(make_lab):
    lab = make_lab("upm")
    browser = Client()
    browser.force_login(lab.owner)
    html = browser.get("/services/").content.decode()
    assert "upm-cait" in html
    network = browser.get("/services/network/").content.decode()
    assert "ccs-rectorado" in network and 'data-link="ccs-rectorado" data-state="up"' in network  # the picture
    assert re.search(r"\d\.\d\d %", network)  # QBER in percent, to two decimals
    link = browser.get("/services/network/links/ccs-rectorado/").content.decode()
    assert "Secret key rate" in link and "<svg" in link  # the link's history charts
    response = browser.post("/services/", {"name": "web-sae", "node": "CCS"})
    html = response.content.decode()
    assert response["Cache-Control"] == "no-store"
    assert "BEGIN CERTIFICATE" in html and "PRIVATE KEY" in html
    assert Sae.objects.for_tenant(lab.tenant).get(name="web-sae").node.node_id == "CCS"
    again = browser.get("/services/").content.decode()
    assert "PRIVATE KEY" not in again and "web-sae" in again
    duplicate = browser.post("/services/", {"name": "web-sae", "node": "CCS"}).content.decode()
    assert "already exists" in duplicate


def test_recent_deliveries_show_key_ids_never_keys(make_lab):
    lab = make_lab("upm")
    key = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={}).json()["keys"][0]
    browser = Client()
    browser.force_login(lab.owner)
    html = browser.get("/services/").content.decode()
    assert key["key_ID"] in html and key["key"] not in html
    assert not re.search(re.escape(key["key"][:20]), html)
