"""ETSI 004 key streams through the portal, against the real twin (HTTPS, mTLS) as the backend KMEs."""

from __future__ import annotations

import base64
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

from services import registry, streams
from services.models import KeyStream
from services.tasks import maintain_orders
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides
from tests.conftest import uses_postgres
from tests.services.test_mtls import curl, write_bundle
from tests.tenants.test_secrets import database_text

ROOT = Path(__file__).resolve().parents[2]
CHUNK_BITS = 256  # Key_chunk_size 32 bytes


def used(tenant, quota_key: str) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == quota_key)


def metered_chunks(stream: KeyStream) -> int:
    """Chunk indexes charged so far, from the usage ledger."""
    return UsageRecord.objects.for_tenant(stream.tenant_id).filter(
        idempotency_key__startswith=f"etsi004:{stream.backend_ksid}:", kind=UsageRecord.Kind.CONSUME).count()


def call(lab, sae: str, op: str, method: str = "post", **data):
    """The portal's 004 REST as ``sae`` (API token + X-SAE-ID); GET sends ``data`` as the query string."""
    send = getattr(lab.client, method)
    return send(f"/api/etsi004/{op}", data=data, format="json" if method == "post" else None, HTTP_X_SAE_ID=sae)


def ok(response) -> dict:
    assert response.status_code == 200, response.content
    return response.json()


def open_stream(lab, qos: dict | None = None, src: str = "upm-cait", dst: str = "upm-rect") -> str:
    opened = ok(call(lab, src, "open_connect", source=f"sae://{src}", destination=f"sae://{dst}",
                     QoS={"Key_chunk_size": 32, "Min_bps": 1000, "TTL": 60, **(qos or {})}))
    assert opened["status"] == 1, opened
    return opened["Key_stream_ID"]


def join(lab, ksid: str, src: str = "upm-rect", dst: str = "upm-cait") -> dict:
    return ok(call(lab, src, "open_connect", source=f"sae://{src}", destination=f"sae://{dst}", Key_stream_ID=ksid))


def get_key(lab, sae: str, ksid: str, **params) -> dict:
    return ok(call(lab, sae, "get_key", "get", Key_stream_ID=ksid, **params))


def test_both_saes_read_the_same_chunks_metered_once_per_index(make_lab, caplog):
    caplog.set_level(logging.DEBUG)
    lab = make_lab("upm")
    ksid = open_stream(lab)
    assert used(lab.tenant, "key_streams") == 1
    assert get_key(lab, "upm-cait", ksid)["status"] == 3  # the peer has not joined
    assert join(lab, ksid)["status"] == 0
    assert join(lab, ksid)["status"] == 5  # joined already: Key_stream_ID in use
    # The peer asks first for index 0, the initiator first for index 1: same bytes either way.
    r0 = get_key(lab, "upm-rect", ksid, index=0)
    c1 = get_key(lab, "upm-cait", ksid, index=1)
    c0 = get_key(lab, "upm-cait", ksid, index=0)
    r1 = get_key(lab, "upm-rect", ksid, index=1)
    assert all(r["status"] == 0 for r in (r0, c1, c0, r1))
    assert c0["key_buffer"] == r0["key_buffer"] and c1["key_buffer"] == r1["key_buffer"]
    assert c0["key_buffer"] != c1["key_buffer"] and len(base64.b64decode(c0["key_buffer"])) == 32
    assert c0["Metadata"]["Key_stream_ID"] == ksid and c0["Metadata"]["index"] == 0
    assert c0["Metadata"]["hops"] == 2  # relayed through CCS
    # Without an index each SAE continues with its next one.
    c2, r2 = get_key(lab, "upm-cait", ksid), ok(call(lab, "upm-rect", "get_key", Key_stream_ID=ksid))
    assert c2["index"] == r2["index"] == 2 and c2["key_buffer"] == r2["key_buffer"]
    assert call(lab, "upm-cait", "get_key", "get", Key_stream_ID=ksid, index=5)["Cache-Control"] == "no-store"
    # A chunk goes to each SAE once; asking again is status 2 and costs nothing.
    assert get_key(lab, "upm-cait", ksid, index=0)["status"] == 2
    # Metered per chunk index, once, whichever SAE read it first.
    assert used(lab.tenant, "qkd_key_bits.day") == 4 * CHUNK_BITS
    records = UsageRecord.objects.for_tenant(lab.tenant).filter(meter="qkd_key_bits")
    assert sorted(r.reference for r in records) == [f"etsi004:{ksid}:{i}" for i in (0, 1, 2, 5)]
    assert metered_chunks(KeyStream.objects.for_tenant(lab.tenant).get()) == 4

    closed = ok(call(lab, "upm-rect", "close", Key_stream_ID=ksid))
    assert closed == {"status": 0, "Key_stream_ID": ksid}
    assert used(lab.tenant, "key_streams") == 0
    # The peer's calls after CLOSE get 004 statuses: 4 (the stream's connection is no more), close is done.
    after = ok(call(lab, "upm-cait", "get_key", "get", Key_stream_ID=ksid, index=3))
    assert after["status"] == 4 and after["message"] == "key stream closed" and "key_buffer" not in after
    assert ok(call(lab, "upm-cait", "close", Key_stream_ID=ksid))["status"] == 0
    assert used(lab.tenant, "key_streams") == 0  # released once

    # Key material never reaches the database or the logs: only IDs do.
    dump, logs = database_text(), caplog.text
    for chunk in (c0, c1, c2):
        raw = base64.b64decode(chunk["key_buffer"])
        for form in (chunk["key_buffer"], raw.hex(), raw.hex().upper()):
            assert form not in dump and form not in logs
    assert ksid in dump


def test_streams_need_the_keys_write_scope(make_lab, client_for):
    lab = make_lab("upm")
    reader = client_for(lab.owner, lab.tenant, ["keys:read"])
    response = reader.post("/api/etsi004/open_connect", {"source": "sae://upm-cait", "destination": "sae://upm-rect"},
                           format="json", HTTP_X_SAE_ID="upm-cait")
    assert response.status_code == 403 and "keys:write" in response.json()["message"]
    assert used(lab.tenant, "key_streams") == 0


def test_two_saes_of_one_node_share_a_stream(make_lab):
    lab = make_lab("upm")
    lab.add_sae("upm-cait-2", "CAIT")
    ksid = open_stream(lab, dst="upm-cait-2")
    assert join(lab, ksid, src="upm-cait-2", dst="upm-cait")["status"] == 0
    a, b = get_key(lab, "upm-cait", ksid), get_key(lab, "upm-cait-2", ksid)
    assert a["status"] == b["status"] == 0 and a["key_buffer"] == b["key_buffer"]


def test_concurrent_stream_quota_is_taken_on_open_and_given_back_on_close(make_lab):
    lab = make_lab("upm")  # the test plan allows 2 open streams
    first, _second = open_stream(lab), open_stream(lab)
    refused = call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect")
    assert refused.status_code == 429
    assert "quota key_streams exceeded" in refused.json()["message"] and "error" not in refused.json()
    assert KeyStream.objects.for_tenant(lab.tenant).count() == 2 and used(lab.tenant, "key_streams") == 2
    assert ok(call(lab, "upm-cait", "close", Key_stream_ID=first))["status"] == 0
    assert used(lab.tenant, "key_streams") == 1
    open_stream(lab)
    assert used(lab.tenant, "key_streams") == 2


def test_qos_beyond_the_path_gets_a_counter_proposal_and_costs_nothing(make_lab):
    lab = make_lab("upm")
    huge = {"Min_bps": 10**12, "Max_bps": 10**12}
    answer = ok(call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect",
                     QoS=huge))
    assert answer["status"] == 7 and answer["Key_stream_ID"] is None
    offer = answer["QoS"]["Min_bps"]
    assert 0 < offer < 10**12 and answer["QoS"]["Max_bps"] == offer
    assert used(lab.tenant, "key_streams") == 0 and not KeyStream.objects.for_tenant(lab.tenant).exists()
    # Accepting the offer opens the stream, capped at what the path delivers. The path's capacity is live (the
    # twin's key rate moves), so it may have changed since the offer: a new counter-proposal is taken up again.
    for _ in range(3):
        accepted = ok(call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect",
                           QoS={"Min_bps": offer, "Max_bps": 10**12}))
        if accepted["status"] != 7:
            break
        offer = accepted["QoS"]["Min_bps"]
    assert accepted["status"] == 1 and offer <= accepted["QoS"]["Max_bps"] < 10**12


def test_another_tenants_stream_is_indistinguishable_from_an_unknown_one(make_lab):
    a, b = make_lab("alpha"), make_lab("bravo")
    ksid = open_stream(a, src="alpha-cait", dst="alpha-rect")
    random_id = str(uuid.uuid4())
    for op, method in (("get_key", "get"), ("close", "post")):
        theirs = call(b, "bravo-cait", op, method, Key_stream_ID=ksid)
        unknown = call(b, "bravo-cait", op, method, Key_stream_ID=random_id)
        assert theirs.status_code == unknown.status_code == 400
        assert theirs.json()["message"] == unknown.json()["message"]
    # Naming a's stream in open_connect opens bravo's own stream under that ID; a's stream is untouched.
    own = ok(call(b, "bravo-rect", "open_connect", source="sae://bravo-rect", destination="sae://bravo-cait",
                  Key_stream_ID=ksid))
    assert own["status"] == 1 and own["Key_stream_ID"] == ksid
    assert join(a, ksid, src="alpha-rect", dst="alpha-cait")["status"] == 0
    assert get_key(a, "alpha-rect", ksid)["status"] == 0
    # b cannot act as a's SAEs at all.
    assert call(b, "alpha-cait", "get_key", "get", Key_stream_ID=ksid).status_code == 400
    assert used(a.tenant, "qkd_key_bits.day") == CHUNK_BITS and used(b.tenant, "qkd_key_bits.day") == 0


@pytest.mark.parametrize("body, fragment", [
    ({"QoS": {"Key_chunk_size": 0}}, "Key_chunk_size"),
    ({"QoS": {"Min_bps": 10, "Max_bps": 5}}, "Min_bps exceeds Max_bps"),
    ({"QoS": {"TTL": 0}}, "TTL"),
    ({"QoS": {"Max_bps": "fast"}}, "Max_bps"),
    ({"QoS": {"Bandwidth": 1}}, "unknown QoS"),
    ({"QoS": [1]}, "QoS must be an object"),
    ({"destination": "sae://nobody"}, "unknown destination SAE"),
    ({"destination": "sae://upm-cait"}, "different SAEs"),
    ({"destination": 7}, "destination must be an SAE URI"),
    ({"Key_stream_ID": "not-a-uuid"}, "UUID"),
])
def test_bad_open_connect_is_an_etsi_error_and_costs_nothing(make_lab, body, fragment):
    lab = make_lab("upm")
    request = {"source": "sae://upm-cait", "destination": "sae://upm-rect", **body}
    response = call(lab, "upm-cait", "open_connect", **request)
    assert response.status_code == 400, response.content
    assert fragment in response.json()["message"] + str(response.json().get("details", ""))
    assert used(lab.tenant, "key_streams") == 0 and not KeyStream.objects.for_tenant(lab.tenant).exists()


def test_bad_get_key_loses_no_chunk(make_lab):
    lab = make_lab("upm")
    ksid = open_stream(lab)
    join(lab, ksid)
    wrong_source = call(lab, "upm-cait", "open_connect", source="sae://upm-rect", destination="sae://upm-cait")
    assert wrong_source.status_code == 401
    for params in ({"index": -1}, {"index": "x"}, {"metadata_size": "big"}, {"Key_stream_ID": "nope"}):
        response = call(lab, "upm-cait", "get_key", "get", **{"Key_stream_ID": ksid, **params})
        assert response.status_code == 400, (params, response.content)
    assert call(lab, "upm-cait", "get_key", "get").status_code == 400  # no Key_stream_ID
    # A metadata buffer too small is status 8, before the chunk leaves the KME: it is still there after.
    small = get_key(lab, "upm-cait", ksid, index=0, metadata_size=8)
    assert small["status"] == 8 and small["metadata_size_needed"] > 8 and "key_buffer" not in small
    assert used(lab.tenant, "qkd_key_bits.day") == 0
    c0 = get_key(lab, "upm-cait", ksid, index=0, metadata_size=small["metadata_size_needed"] + 200)
    r0 = get_key(lab, "upm-rect", ksid, index=0)
    assert c0["status"] == r0["status"] == 0 and c0["key_buffer"] == r0["key_buffer"]
    # A third SAE of the tenant is no application of the stream.
    lab.add_sae("upm-rect-2", "Rectorado")
    assert call(lab, "upm-rect-2", "get_key", "get", Key_stream_ID=ksid).status_code == 401


def test_a_chunk_ahead_of_max_bps_is_refused_and_not_charged(make_lab):
    lab = make_lab("upm")
    # 512 b/s in 256-bit chunks: two chunks a second, a one-second burst of two.
    ksid = open_stream(lab, {"Min_bps": 256, "Max_bps": 512, "Timeout": 100})
    join(lab, ksid)
    assert get_key(lab, "upm-cait", ksid, index=0)["status"] == 0
    ahead = get_key(lab, "upm-cait", ksid, index=40)  # due ~19.5 s after the join
    assert ahead["status"] == 6 and "Max_bps" in ahead["message"]  # not due within the QoS Timeout
    assert used(lab.tenant, "qkd_key_bits.day") == CHUNK_BITS


def test_ttl_expiry_by_the_periodic_task_closes_the_backend_stream_and_releases_quota(make_lab, backend_twin):
    lab = make_lab("upm")
    ksid = open_stream(lab, {"TTL": 1})
    join(lab, ksid)
    assert get_key(lab, "upm-rect", ksid)["status"] == 0
    stream = KeyStream.objects.for_tenant(lab.tenant).get()
    from django.utils import timezone

    deadline = time.monotonic() + 10
    while timezone.now() <= stream.expires_at:  # a bounded wait until the TTL has run out, not a fixed sleep
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert maintain_orders.apply().get()["expired"] == 1
    stream.refresh_from_db()
    assert stream.state == KeyStream.State.EXPIRED and used(lab.tenant, "key_streams") == 0
    assert get_key(lab, "upm-cait", ksid)["status"] == 4  # TTL passed: the stream is no more
    assert maintain_orders.apply().get()["expired"] == 0  # released once
    assert used(lab.tenant, "key_streams") == 0
    # Closed at the backend, not merely forgotten by the portal: the KME answers its applications status 4.
    with backend_twin.session("sae-cait-1", portal=True) as s:
        r = s.get(backend_twin.url("CAIT") + "/api/get_key", params={"Key_stream_ID": str(stream.backend_ksid)},
                  timeout=10)
    assert r.status_code == 200 and r.json()["status"] == 4
    assert ok(call(lab, "upm-cait", "close", Key_stream_ID=ksid))["status"] == 0
    assert get_key(lab, "upm-cait", ksid)["status"] == 4


def test_the_filler_makes_chunks_ahead_at_the_backend(make_lab, twin_factory):
    lab = make_lab("upm")
    # A twin of our own: this test cuts a link.
    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=50)
    registry.register_twin(twin.endpoints)
    registry.forget_status_cache()
    ksid = open_stream(lab, {"Timeout": 300})
    join(lab, ksid)
    made = streams.fill_streams(budget_s=30)
    stream = KeyStream.objects.for_tenant(lab.tenant).get()
    assert made == stream.prefetched_to + 1 == streams.MAX_AHEAD_CHUNKS
    assert used(lab.tenant, "qkd_key_bits.day") == 0  # made ahead is not delivered: not charged
    twin.admin("ccs-rectorado", "cut")
    # The chunks made ahead are at both KMEs already: both SAEs still get them with the path down.
    last = stream.prefetched_to
    for index in (0, last):
        c, r = get_key(lab, "upm-cait", ksid, index=index), get_key(lab, "upm-rect", ksid, index=index)
        assert c["status"] == r["status"] == 0 and c["key_buffer"] == r["key_buffer"]
    # Not made ahead and no path: no key within the QoS Timeout.
    assert get_key(lab, "upm-rect", ksid, index=last + 1)["status"] == 6
    assert used(lab.tenant, "qkd_key_bits.day") == 2 * CHUNK_BITS
    # No path, no new stream.
    set_quota_overrides(lab.tenant, {"key_streams": 5})
    cut = ok(call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect"))
    assert cut["status"] == 4 and cut["Key_stream_ID"] is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not uses_postgres(), reason="the worker process shares the test database: PostgreSQL")
def test_a_celery_worker_with_beat_fills_and_expires_streams(make_lab, backend_twin, tmp_path):
    lab = make_lab("upm")
    filled = open_stream(lab, {"TTL": 120})
    join(lab, filled)
    expiring = open_stream(lab, {"TTL": 1})
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}",
           "DJANGO_SETTINGS_MODULE": "portal.settings.base", "QXAAS_VAR_DIR": str(tmp_path),
           # A broker of its own (kombu's filesystem transport under tmp_path): no other worker takes its tasks.
           "CELERY_BROKER_URL": "filesystem://", "QKD_AUTO_REGISTER_TWIN": "false"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "-B", "--pool", "solo", "--loglevel", "INFO",
         "--schedule", str(tmp_path / "beat-schedule")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    rows = KeyStream.objects.for_tenant(lab.tenant)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = (rows.get(ksid=filled).prefetched_to >= streams.MAX_AHEAD_CHUNKS - 1
                    and rows.get(ksid=expiring).state == KeyStream.State.EXPIRED)
            if done:
                break
            time.sleep(0.3)
        else:
            worker.terminate()
            pytest.fail("beat and worker did not maintain the streams:\n" + worker.communicate(timeout=20)[0][-3000:])
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
    assert used(lab.tenant, "key_streams") == 1 and used(lab.tenant, "qkd_key_bits.day") == 0
    c, r = get_key(lab, "upm-cait", filled), get_key(lab, "upm-rect", filled)
    assert c["status"] == r["status"] == 0 and c["key_buffer"] == r["key_buffer"]


def test_curl_with_sae_certificates_runs_a_stream_through_the_https_listener(https_portal, make_lab, tmp_path):
    lab = make_lab("upm")
    ca = str(tmp_path / "ca.pem")
    Path(ca).write_text(lab.bundles["upm-cait"]["ca_chain"])
    cait_cert, cait_key = write_bundle(tmp_path, "cait", lab.bundles["upm-cait"])
    rect_cert, rect_key = write_bundle(tmp_path, "rect", lab.bundles["upm-rect"])
    cait = ("--cacert", ca, "--cert", cait_cert, "--key", cait_key)
    rect = ("--cacert", ca, "--cert", rect_cert, "--key", rect_key)
    json_body = ("-H", "Content-Type: application/json", "-d")
    code, opened = curl(*cait, *json_body, '{"source": "sae://upm-cait", "destination": "sae://upm-rect"}',
                        f"{https_portal}/api/etsi004/open_connect")
    assert code == 200 and opened["status"] == 1, opened
    ksid = opened["Key_stream_ID"]
    code, joined = curl(*rect, *json_body,
                        f'{{"source": "sae://upm-rect", "destination": "sae://upm-cait", "Key_stream_ID": "{ksid}"}}',
                        f"{https_portal}/api/etsi004/open_connect")
    assert code == 200 and joined["status"] == 0, joined
    code, a = curl(*cait, f"{https_portal}/api/etsi004/get_key?Key_stream_ID={ksid}")
    code2, b = curl(*rect, f"{https_portal}/api/etsi004/get_key?Key_stream_ID={ksid}&index=0")
    assert code == code2 == 200 and a["status"] == b["status"] == 0 and a["key_buffer"] == b["key_buffer"]
    code, closed = curl(*rect, *json_body, f'{{"Key_stream_ID": "{ksid}"}}', f"{https_portal}/api/etsi004/close")
    assert code == 200 and closed["status"] == 0
    assert used(lab.tenant, "key_streams") == 0 and used(lab.tenant, "qkd_key_bits.day") == 32 * 8


def test_the_tenant_lists_its_streams_with_counters_never_key_material(make_lab):
    lab, other = make_lab("upm"), make_lab("other")
    ksid = open_stream(lab)
    join(lab, ksid)
    chunks = [get_key(lab, "upm-cait", ksid, index=i) for i in (0, 1)] + [get_key(lab, "upm-rect", ksid, index=0)]
    assert all(c["status"] == 0 for c in chunks)
    waiting = open_stream(lab)
    open_stream(other, src="other-cait", dst="other-rect")

    listed = lab.client.get("/api/qkd/streams")
    assert listed.status_code == 200, listed.content
    rows = {r["Key_stream_ID"]: r for r in listed.json()["results"]}
    assert set(rows) == {ksid, waiting}  # never another tenant's streams
    row = rows[ksid]
    assert row["state"] == "connected" and row["source"] == "upm-cait" and row["destination"] == "upm-rect"
    assert row["QoS"]["Key_chunk_size"] == 32 and row["hops"] == 2 and row["path"] == ["CAIT", "CCS", "Rectorado"]
    # index 0 read by both SAEs is charged once: the counter equals the stream's ledger rows
    assert row["chunks_metered"] == 2 == metered_chunks(KeyStream.objects.for_tenant(lab.tenant).get(ksid=ksid))
    assert row["key_bits_metered"] == 2 * CHUNK_BITS == used(lab.tenant, "qkd_key_bits.day")
    assert row["next_index_source"] == 2 and row["next_index_destination"] == 1 and row["highest_index"] == 1
    assert "backend_ksid" not in row and "key_buffer" not in row
    text = listed.content.decode()
    assert all(c["key_buffer"] not in text for c in chunks)

    assert [r["Key_stream_ID"] for r in lab.client.get("/api/qkd/streams?state=opened").json()["results"]] == [waiting]
    assert lab.client.get("/api/qkd/streams?state=bogus").status_code == 400
    assert lab.client.get(f"/api/qkd/streams/{ksid}").json()["chunks_metered"] == 2
    other_ksid = other.client.get("/api/qkd/streams").json()["results"][0]["Key_stream_ID"]
    assert lab.client.get(f"/api/qkd/streams/{other_ksid}").status_code == 404

    # the key streams page lists them too
    lab.client.force_login(lab.owner)
    page = lab.client.get("/services/streams/").content.decode()
    assert ksid in page and waiting in page and other_ksid not in page


def test_an_sae_with_key_streams_cannot_be_deleted(make_lab):
    lab = make_lab("upm")
    lab.add_sae("upm-ccs", "CCS")
    ksid = open_stream(lab, dst="upm-ccs")
    ok(call(lab, "upm-cait", "close", Key_stream_ID=ksid))  # closed streams stay on record (metering trail)
    response = lab.client.delete(f"/api/saes/{lab.bundles['upm-ccs']['id']}/")
    assert response.status_code == 409, response.content
    assert "key streams" in response.json()["error"]["message"]
    assert KeyStream.objects.for_tenant(lab.tenant).filter(ksid=ksid).exists()


def test_operators_see_key_streams_in_the_admin(make_lab, make_user, settings):
    from django.test import Client

    settings.QXAAS_REQUIRE_STAFF_MFA = False
    lab = make_lab("upm")
    ksid = open_stream(lab)
    admin_user = make_user("root", staff=True)
    admin_user.is_superuser = True
    admin_user.save()
    browser = Client()
    browser.force_login(admin_user)
    listing = browser.get("/admin/services/keystream/")
    assert listing.status_code == 200 and ksid in listing.content.decode()
    stream = KeyStream.objects.for_tenant(lab.tenant).get(ksid=ksid)
    detail = browser.get(f"/admin/services/keystream/{stream.pk}/change/")
    assert detail.status_code == 200
    assert browser.post(f"/admin/services/keystream/{stream.pk}/delete/").status_code == 403  # the metering trail


def test_a_closed_streams_connected_time_is_in_the_usage_api(make_lab):
    lab = make_lab("upm")
    ksid = open_stream(lab)
    join(lab, ksid)
    stream = KeyStream.objects.for_tenant(lab.tenant).get()
    # Connected 75 s ago (the clock of a real stream, without waiting for it).
    KeyStream.objects.for_tenant(lab.tenant).filter(pk=stream.pk).update(
        activated_at=stream.activated_at - timedelta(seconds=75), metered_until=None)
    ok(call(lab, "upm-cait", "close", Key_stream_ID=ksid))
    stream.refresh_from_db()
    listed = ok(lab.client.get("/api/usage/", {"meter": "key_stream_seconds"}))
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert rows and {r["order_id"] for r in rows} == {str(stream.uuid)}
    assert all(r["unit"] == "second" for r in rows)
    assert sum(r["quantity"] for r in rows) == (math.floor(stream.closed_at.timestamp())
                                               - math.floor(stream.activated_at.timestamp())) >= 75
    detail = ok(lab.client.get(f"/api/qkd/streams/{ksid}"))
    assert detail["order_id"] == str(stream.uuid) and detail["state"] == "closed"


def test_one_json_binding_at_the_portal_as_at_the_kmes(make_lab):
    lab = make_lab("upm")
    opened = ok(call(lab, "upm-cait", "open_connect", source="qkd://upm-cait:443/app", destination="sae://upm-rect",
                     qos={"Key_chunk_size": 16, "TTL": 60}))
    assert opened["status"] == 1 and opened["QoS"]["Key_chunk_size"] == 16  # lower-case qos honoured
    ksid = opened["Key_stream_ID"]
    joined = ok(call(lab, "upm-rect", "open_connect", source="sae://upm-rect", destination="sae://upm-cait",
                     key_stream_id=ksid))
    assert joined["status"] == 0 and joined["Key_stream_ID"] == ksid  # a join, not a second stream
    assert KeyStream.objects.for_tenant(lab.tenant).count() == 1 and used(lab.tenant, "key_streams") == 1
    chunk = ok(call(lab, "upm-cait", "get_key", key_stream_id=ksid, index=0))
    assert chunk["status"] == 0 and len(base64.b64decode(chunk["key_buffer"])) == 16
    for op, method, data in (("open_connect", "post", {"source": "sae://upm-cait", "destination": "sae://upm-rect",
                                                       "QOS_typo": {}}),
                             ("get_key", "get", {"Key_stream_ID": ksid, "idx": 1}),
                             ("close", "post", {"Key_stream_ID": ksid, "force": True})):
        refused = call(lab, "upm-cait", op, method, **data)
        assert refused.status_code == 400 and "unknown field" in refused.json()["message"], refused.content
    assert used(lab.tenant, "key_streams") == 1 and used(lab.tenant, "qkd_key_bits.day") == 16 * 8


def test_qos_granted_as_enforced_and_mimetype_counter_proposed_at_the_portal(make_lab):
    lab = make_lab("upm")
    opened = ok(call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect",
                     QoS={"Timeout": 60000, "TTL": 60}))
    assert opened["status"] == 1 and opened["QoS"]["Timeout"] == 10000
    other = ok(call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect",
                    QoS={"Metadata_mimetype": "text/plain"}))
    assert other["status"] == 7 and other["Key_stream_ID"] is None
    assert other["QoS"]["Metadata_mimetype"] == "application/json"
    assert used(lab.tenant, "key_streams") == 1  # the counter-proposal opened nothing
