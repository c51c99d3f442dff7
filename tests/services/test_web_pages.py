"""The researcher's object pages in-process (Django test client, the real twin): SAE and key-stream actions, bad
input refused in words with nothing left behind, another tenant's objects indistinguishable from none, and the
fragments the pages refresh themselves with. The same pages in a real browser: tests/browser/."""

from __future__ import annotations

import pytest
from django.test import Client

from services.models import KeyStream, LinkSample, Sae
from tenants.models import QuotaCounter, Role


def web(user) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


def open_from_page(browser: Client, **fields) -> object:
    form = {"source": "upm-cait", "destination": "upm-rect", "Key_chunk_size": "32", "Min_bps": "1000",
            "Max_bps": "8000", "TTL": "120", "Timeout": "1000", "Jitter": "10", "Priority": "0", **fields}
    return browser.post("/services/streams/", form)


def test_open_connect_and_close_a_stream_from_its_page(make_lab):
    lab = make_lab("upm")
    browser = web(lab.owner)
    response = open_from_page(browser)
    assert response.status_code == 302, response.content.decode()[:2000]
    stream = KeyStream.objects.for_tenant(lab.tenant).get()
    assert response["Location"] == f"/services/streams/{stream.ksid}/" and stream.state == "opened"
    page = browser.get(response["Location"]).content.decode()
    assert f"Key_stream_ID={stream.ksid}" in page and "X-SAE-ID: upm-cait" in page  # the curl panel
    assert browser.post(f"/services/streams/{stream.ksid}/connect").status_code == 302
    assert KeyStream.objects.for_tenant(lab.tenant).get().state == "connected"
    fragment = browser.get(f"/services/streams/{stream.ksid}/fragment").content.decode()
    assert 'data-state="connected"' in fragment and "<html" not in fragment
    assert str(stream.ksid)[:8] in browser.get("/services/live/").content.decode()
    assert browser.post(f"/services/streams/{stream.ksid}/close").status_code == 302
    assert KeyStream.objects.for_tenant(lab.tenant).get().state == "closed"
    assert QuotaCounter.objects.for_tenant(lab.tenant).get(quota_key="key_streams").used == 0  # slot given back


@pytest.mark.parametrize("fields, words", [
    ({"Key_chunk_size": "0"}, "Key_chunk_size must be"),
    ({"TTL": "lots"}, "TTL must be a whole number"),
    ({"destination": "nobody"}, "unknown destination SAE"),
    ({"destination": "upm-cait"}, "must be different"),
    ({"source": "other-tenants-sae"}, "unknown source SAE"),
])
def test_bad_stream_requests_are_refused_in_words_and_open_nothing(make_lab, fields, words):
    lab = make_lab("upm")
    response = open_from_page(web(lab.owner), **fields)
    assert response.status_code == 200 and words in response.content.decode()
    assert not KeyStream.objects.for_tenant(lab.tenant).exists()
    assert not QuotaCounter.objects.for_tenant(lab.tenant).filter(quota_key="key_streams", used__gt=0).exists()


def test_another_tenants_saes_and_streams_are_404_and_untouched(make_lab):
    victim, attacker = make_lab("victim"), make_lab("attacker")
    ksid = open_from_page(web(victim.owner), source="victim-cait", destination="victim-rect")["Location"]
    ksid = ksid.rstrip("/").rsplit("/", 1)[1]
    serial = Sae.objects.for_tenant(victim.tenant).get(name="victim-cait").cert_serial
    browser = web(attacker.owner)
    for path in ("/services/saes/victim-cait/", f"/services/streams/{ksid}/", f"/services/streams/{ksid}/fragment"):
        assert browser.get(path).status_code == 404, path
    for path in ("/services/saes/victim-cait/reissue", "/services/saes/victim-cait/revoke",
                 f"/services/streams/{ksid}/close", f"/services/streams/{ksid}/connect"):
        assert browser.post(path).status_code == 404, path
    assert Sae.objects.for_tenant(victim.tenant).get(name="victim-cait").cert_serial == serial
    assert KeyStream.objects.for_tenant(victim.tenant).get().state == "opened"
    assert ksid not in browser.get("/services/streams/").content.decode()


def test_sae_page_reissues_once_and_revokes_and_a_viewer_cannot(make_lab, member):
    lab = make_lab("upm")
    browser = web(lab.owner)
    old = Sae.objects.for_tenant(lab.tenant).get(name="upm-cait").cert_serial
    reissued = browser.post("/services/saes/upm-cait/reissue")
    assert reissued["Cache-Control"] == "no-store" and "PRIVATE KEY" in reissued.content.decode()
    new = Sae.objects.for_tenant(lab.tenant).get(name="upm-cait").cert_serial
    assert new and new != old
    assert "PRIVATE KEY" not in browser.get("/services/saes/upm-cait/").content.decode()  # shown once
    viewer = web(member(lab.tenant, "upm-viewer", role=Role.VIEWER))
    refused = viewer.post("/services/saes/upm-cait/revoke", follow=True).content.decode()
    assert "your role cannot" in refused
    assert Sae.objects.for_tenant(lab.tenant).get(name="upm-cait").cert_serial == new
    browser.post("/services/saes/upm-cait/revoke")
    assert Sae.objects.for_tenant(lab.tenant).get(name="upm-cait").cert_serial == ""
    assert browser.post("/services/saes/upm-cait/bogus").status_code == 404


def test_network_views_record_link_history_and_draw_it(make_lab):
    lab = make_lab("upm")
    browser = web(lab.owner)
    fragment = browser.get("/services/network/fragment").content.decode()
    assert 'data-link="cait-ccs" data-state="up"' in fragment and "Simulated backend" in fragment
    assert "<html" not in fragment
    assert set(LinkSample.objects.values_list("link_id", flat=True)) == {"cait-ccs", "ccs-rectorado"}
    assert browser.get("/services/network/links/no-such-link/").status_code == 404
    page = browser.get("/services/network/links/cait-ccs/").content.decode()
    assert page.count("<svg") >= 3 and "Secret key rate" in page
    assert "all up" in browser.get("/services/alarms/").content.decode()
