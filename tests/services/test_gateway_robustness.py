"""The gateway when things go wrong: a dead backend, a race for the last bits of a quota, and key material
that must never reach the portal's database, logs or caches (only key IDs may)."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading

import pytest
import requests
from django.core.cache import caches
from django.db import connection

from services import keyids, registry
from services.models import KeyDelivery
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides
from tests.services import listener
from tests.services.test_mtls import write_bundle

KEY_BITS = 256


def used_bits(tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == "qkd_key_bits.day")


def metering(tenant) -> tuple[int, int, int]:
    """(quota used, ledger rows, key-ID rows): what a request may or may not have consumed."""
    return used_bits(tenant), UsageRecord.objects.for_tenant(tenant).count(), \
        sum(KeyDelivery.objects.for_tenant(tenant).values_list("key_count", flat=True))


def assert_etsi_503(response) -> None:
    assert response.status_code == 503, response.content
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"]
    assert set(body) <= {"message", "details"}  # the ETSI error body, not the portal's JSON error format


# --- backend down ---------------------------------------------------------------------------------------------
def test_backend_down_is_a_503_in_the_etsi_format_and_consumes_nothing(make_lab, twin_factory):
    lab = make_lab("upm")
    twin = twin_factory("madqci", time_scale=50.0)  # our own backend, which this test may stop
    registry.register_twin(twin.endpoints)
    registry.forget_status_cache()
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=4)
    first = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 2})
    assert first.status_code == 200, first.content
    key_ids = [k["key_ID"] for k in first.json()["keys"]]
    before = metering(lab.tenant)
    assert before == (2 * KEY_BITS, 1, 2)

    twin.stop()
    # the KME's limits are cached from the first call: the failure is the key request itself
    assert_etsi_503(lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 1}))
    assert_etsi_503(lab.etsi("upm-cait", "get", "upm-rect/enc_keys?number=1"))
    # the slave's KME is down too: the key stays on record, unfetched, for when it is back
    assert_etsi_503(lab.etsi("upm-rect", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": key_ids[0]}]}))
    assert not KeyDelivery.objects.for_tenant(lab.tenant).filter(fetched_keys__gt=0).exists()
    # no cached limits: the status request fails the same way
    registry.forget_status_cache()
    assert_etsi_503(lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 1}))
    assert_etsi_503(lab.etsi("upm-cait", "get", "upm-rect/status"))
    # the simple REST API too
    simple = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado")
    assert simple.status_code == 503 and "CAIT" in simple.content.decode()
    assert metering(lab.tenant) == before

    twin.start()  # back (same state directory, new ports): the key on record is still the slave's
    registry.register_twin(twin.endpoints)
    registry.forget_status_cache()
    peer = lab.etsi("upm-rect", "post", "upm-cait/dec_keys", data={"key_IDs": [{"key_ID": k} for k in key_ids]})
    assert peer.status_code == 200, peer.content
    assert {k["key_ID"]: k["key"] for k in peer.json()["keys"]} == {k["key_ID"]: k["key"] for k in first.json()["keys"]}
    assert metering(lab.tenant) == before  # dec_keys is not charged


# --- a race for the last bits of a quota ---------------------------------------------------------------------
PARALLEL = 64
KEYS_THAT_FIT = 40


def test_64_parallel_requests_near_the_quota_never_over_deliver(transactional_db, make_lab, client_for):
    if connection.vendor != "postgresql":
        pytest.skip("row locks of concurrent transactions: run with DATABASE_URL on PostgreSQL")
    lab = make_lab("upm")
    limit = KEYS_THAT_FIT * KEY_BITS + KEY_BITS // 2  # 40 keys fit, the 41st does not
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": limit, "qkd_key_bits.month": -1})
    clients = [client_for(lab.owner, lab.tenant, ["keys:read", "keys:write"]) for _ in range(PARALLEL)]
    start = threading.Barrier(PARALLEL, timeout=60)
    outcomes: list[tuple[int, list[dict]]] = []
    lock = threading.Lock()

    def one(client) -> None:
        try:
            start.wait()
            response = client.post("/api/v1/keys/upm-rect/enc_keys", {"number": 1, "size": KEY_BITS}, format="json",
                                   HTTP_X_SAE_ID="upm-cait")
            keys = response.json().get("keys", []) if response.status_code == 200 else []
            with lock:
                outcomes.append((response.status_code, keys))
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    assert len(outcomes) == PARALLEL
    # ETSI 014 answers quota exhaustion with 503 (it lists no 429)
    assert {status for status, _ in outcomes} <= {200, 503}, sorted(status for status, _ in outcomes)
    delivered = [k["key_ID"] for status, keys in outcomes if status == 200 for k in keys]
    assert len(set(delivered)) == len(delivered)
    ledger = sum(UsageRecord.objects.for_tenant(lab.tenant).values_list("quantity", flat=True))
    on_record = {k for row in KeyDelivery.objects.for_tenant(lab.tenant) for k in row.key_ids()}
    # never over: keys delivered == ledger == quota used <= limit; and never under (all that fit were given)
    assert len(delivered) * KEY_BITS == ledger == used_bits(lab.tenant) <= limit
    assert len(delivered) == KEYS_THAT_FIT
    assert on_record == set(delivered)


# --- key material never leaves the request/response path --------------------------------------------------
def encodings(key_b64: str) -> set[str]:
    """Every way a log line or a column could spell this key: base64 (with and without padding, URL-safe)
    and hex (both cases)."""
    raw = base64.b64decode(key_b64)
    forms = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), raw.hex(), raw.hex().upper(),
             binascii.hexlify(raw, ":").decode()}
    return forms | {f.rstrip("=") for f in forms}


def database_dump() -> tuple[str, bytes]:
    """Every row of every table: as text (what a dump shows) and the raw bytes of any binary column."""
    text, blobs = [], []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - our own table names
            for row in cursor.fetchall():
                text.append(repr(row))
                blobs.extend(bytes(v) for v in row if isinstance(v, bytes | memoryview))
    return "\n".join(text), b"".join(blobs)


def cache_dump() -> bytes:
    """The portal's in-process caches and, when REDIS_URL is set, the Redis values (bounded scan)."""
    out = []
    for cache in caches.all():
        store = getattr(cache, "_cache", None)
        if isinstance(store, dict):
            out.extend(v if isinstance(v, bytes) else repr(v).encode() for v in store.values())
    if os.environ.get("REDIS_URL"):
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
        for n, name in enumerate(client.scan_iter(count=500)):
            if n >= 20_000:
                break
            kind = client.type(name)
            if kind == b"string":
                out.append(client.get(name) or b"")
            elif kind == b"hash":
                out.extend(k + b"=" + v for k, v in client.hgetall(name).items())
    return b"\n".join(out)


@pytest.fixture
def https_portal_with_logs(transactional_db, backend_twin, tmp_path):
    """The portal's HTTPS listener (as `make run` starts it) on the test database, logging at DEBUG into a file."""
    registry.register_twin(backend_twin.endpoints)
    with listener.https_portal(tmp_path, log_level="debug") as (base, _web, log):
        yield base, log


def test_delivered_keys_never_reach_the_database_logs_or_caches(https_portal_with_logs, make_lab, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    base, portal_log = https_portal_with_logs
    lab = make_lab("upm")
    delivered: dict[str, str] = {}

    def keep(container: dict) -> list[dict]:
        for k in container["keys"]:
            delivered[k["key_ID"]] = k["key"]
        return container["keys"]

    # in-process: ETSI 014 with a token (POST and GET forms) and the simple REST API
    keys = keep(lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={"number": 3, "size": 512}).json())
    assert keep(lab.etsi("upm-rect", "post", "upm-cait/dec_keys",
                         data={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}).json())
    key = keep(lab.etsi("upm-cait", "get", "upm-rect/enc_keys?number=1&size=128").json())[0]
    keep(lab.etsi("upm-rect", "get", f"upm-cait/dec_keys?key_ID={key['key_ID']}").json())
    simple = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado&size=256").json()
    delivered[simple["key_ID"]] = simple["key"]
    assert lab.client.get(f"/api/qkd/keys/{simple['key_ID']}").json()["key"] == simple["key"]

    # the real listener: SAE certificates (mTLS) and the token, through gunicorn with its logs captured
    ca = tmp_path / "ca.pem"
    ca.write_text(lab.bundles["upm-cait"]["ca_chain"])
    with requests.Session() as master, requests.Session() as slave:
        master.trust_env = slave.trust_env = False
        master.verify = slave.verify = str(ca)
        master.cert = write_bundle(tmp_path, "master", lab.bundles["upm-cait"])
        slave.cert = write_bundle(tmp_path, "slave", lab.bundles["upm-rect"])
        response = master.post(f"{base}/api/v1/keys/upm-rect/enc_keys", json={"number": 4, "size": 256}, timeout=30)
        assert response.status_code == 200, response.text
        keys = keep(response.json())
        response = slave.post(f"{base}/api/v1/keys/upm-cait/dec_keys",
                              json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}, timeout=30)
        assert response.status_code == 200, response.text
        key = keep(master.get(f"{base}/api/v1/keys/upm-rect/enc_keys?number=1", timeout=30).json())[0]
        keep(slave.get(f"{base}/api/v1/keys/upm-cait/dec_keys?key_ID={key['key_ID']}", timeout=30).json())
        token = {"Authorization": f"Bearer {lab.client.token_secret}"}
        simple = master.get(f"{base}/api/qkd/keys?src=CAIT&dst=Rectorado", headers=token, timeout=30).json()
        delivered[simple["key_ID"]] = simple["key"]
        keep(master.get(f"{base}/api/v1/keys/upm-rect/enc_keys?number=2", timeout=30,
                        headers={**token, "X-SAE-ID": "upm-cait"}).json())

    text, blobs = database_dump()
    logs = caplog.text + portal_log.read_text()
    cached = cache_dump()
    assert len(delivered) >= 12
    # the dump and the logs are the right ones: the deliveries' rows are there (the batch numbers the key IDs
    # seal), and the listener logged the requests
    assert all(str(opened[0]) in text for opened in keyids.open_ids(list(delivered)))
    assert logs.count("/enc_keys") >= 3 and "/dec_keys" in logs
    for key_id, key_b64 in delivered.items():
        raw = base64.b64decode(key_b64)
        for form in encodings(key_b64):
            assert form not in text, f"key {key_id} found in the database"
            assert form not in logs, f"key {key_id} found in the logs"
            assert form.encode() not in cached, f"key {key_id} found in a cache"
        assert raw not in blobs and raw not in cached, f"key {key_id} found as raw bytes"


def test_the_leak_check_would_find_a_key(make_lab, caplog):
    """The check itself can fail: a key logged by mistake is found in every spelling we look for."""
    caplog.set_level(logging.DEBUG)
    lab = make_lab("upm")
    key = lab.etsi("upm-cait", "post", "upm-rect/enc_keys", data={}).json()["keys"][0]
    logging.getLogger("test.leak").debug("oops %s", base64.b64decode(key["key"]).hex())
    assert any(form in caplog.text for form in encodings(key["key"]))
