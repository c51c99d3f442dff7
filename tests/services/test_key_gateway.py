"""The key gateway (the HTTPS listener) itself: ETSI errors, tokens, rate limits and a KME failure through its
asyncio path, against the real processes as `make run` starts them (PostgreSQL: they share the database)."""

from __future__ import annotations

import pytest
import requests

from portal.errors import ServiceUnavailable
from services import keyids, registry
from services.models import KeyDelivery, QkdNode
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides
from tests.services import listener
from tests.services.test_mtls import write_bundle


def session(ca: str, cert: tuple[str, str] | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # the environment's CA bundle must not replace the portal CA
    s.verify = ca
    s.cert = cert
    return s


def etsi_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"message", "details"} and body["message"], body  # the ETSI error body
    return body["message"]


def charged(tenant) -> tuple[int, int]:
    """(ledger rows, keys on record)."""
    return (UsageRecord.objects.for_tenant(tenant).count(),
            sum(KeyDelivery.objects.for_tenant(tenant).values_list("key_count", flat=True)))


def test_errors_tokens_and_a_kme_failure_through_the_gateway(https_and_web, make_lab, tmp_path):
    base, _web = https_and_web
    lab = make_lab("upm")
    ca = str(tmp_path / "ca.pem")
    (tmp_path / "ca.pem").write_text(lab.bundles["upm-cait"]["ca_chain"])
    url = f"{base}/api/v1/keys"
    anonymous = session(ca)
    master = session(ca, write_bundle(tmp_path, "master", lab.bundles["upm-cait"]))
    slave = session(ca, write_bundle(tmp_path, "slave", lab.bundles["upm-rect"]))
    token = {"Authorization": f"Bearer {lab.client.token_secret}"}

    # no credentials, a bad token, a token without X-SAE-ID: ETSI errors, the right statuses
    response = anonymous.post(f"{url}/upm-rect/enc_keys", json={"number": 1}, timeout=10)
    etsi_error(response, 401)
    assert "mTLS" in response.headers["WWW-Authenticate"]
    etsi_error(anonymous.post(f"{url}/upm-rect/enc_keys", data=b"{nope", timeout=10), 401)  # who first, then what
    etsi_error(anonymous.get(f"{url}/upm-rect/status", headers={"Authorization": "Bearer qx_no.such"}, timeout=10),
               401)
    assert "X-SAE-ID" in etsi_error(anonymous.get(f"{url}/upm-rect/status", headers=token, timeout=10), 400)
    # malformed bodies and names
    assert "JSON" in etsi_error(master.post(f"{url}/upm-rect/enc_keys", data=b"{nope", timeout=10), 400)
    etsi_error(master.post(f"{url}/upm-rect/enc_keys", json=[1, 2], timeout=10), 400)
    assert "unknown slave SAE" in etsi_error(master.post(f"{url}/nobody/enc_keys", json={}, timeout=10), 400)
    assert charged(lab.tenant) == (0, 0)

    # a token naming the SAE works like its certificate; the key-delivery rate-limit headers come along
    response = anonymous.post(f"{url}/upm-rect/enc_keys", json={"number": 2}, timeout=10,
                              headers={**token, "X-SAE-ID": "upm-cait"})
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["RateLimit-Policy"].startswith('"key-requests"')
    keys = response.json()["keys"]
    assert all(keyids.open_ids([k["key_ID"]])[0] for k in keys) and charged(lab.tenant) == (1, 2)
    fetched = slave.post(f"{url}/upm-cait/dec_keys", json={"key_IDs": [{"key_ID": keys[0]["key_ID"]}]}, timeout=10)
    assert fetched.status_code == 200 and fetched.json()["keys"][0]["key"] == keys[0]["key"]
    # fetched before: the KME refuses, the tenant sees the one "not found" answer, not the KME's own key IDs
    again = slave.get(f"{url}/upm-cait/dec_keys", params={"key_ID": keys[0]["key_ID"]}, timeout=10)
    assert "not found" in etsi_error(again, 400)
    assert again.json()["details"] == [{"key_IDs": [keys[0]["key_ID"]]}]

    # over the quota: 503 (014 has no 429) in the ETSI format with Retry-After and the quota's RateLimit
    # headers, nothing taken or charged
    set_quota_overrides(lab.tenant, {"qkd_key_bits.day": 3 * 256 + 100, "qkd_key_bits.month": -1})
    refused = master.post(f"{url}/upm-rect/enc_keys", json={"number": 2}, timeout=10)
    assert "quota qkd_key_bits.day exceeded" in etsi_error(refused, 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert '"qkd_key_bits.day";r=356' in refused.headers["RateLimit"] and charged(lab.tenant) == (1, 2)

    # the master's KME goes away: 503 from the asyncio path, nothing charged, and back when it is back
    node = QkdNode.objects.get(node_id="CAIT")
    kme_url = node.kme_url
    QkdNode.objects.filter(pk=node.pk).update(kme_url=f"https://127.0.0.1:{listener.free_port()}")
    try:
        assert "CAIT" in etsi_error(master.post(f"{url}/upm-rect/enc_keys", json={"number": 1}, timeout=10), 503)
        assert charged(lab.tenant) == (1, 2)
    finally:
        QkdNode.objects.filter(pk=node.pk).update(kme_url=kme_url)
    assert master.post(f"{url}/upm-rect/enc_keys", json={"number": 1}, timeout=10).status_code == 200
    assert charged(lab.tenant) == (2, 3)


def forget_key_request_buckets() -> None:
    """Buckets outlive a test run in a developer's Redis, and SAE ids repeat between runs."""
    from django.conf import settings

    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter("qxaas:rl:keys:*"):
            client.delete(key)


def test_the_key_request_rate_limit_answers_503_with_retry_after(transactional_db, backend_twin, make_lab,
                                                                 tmp_path):
    registry.register_twin(backend_twin.endpoints)
    with listener.https_portal(tmp_path, KEY_DELIVERY_RATE_LIMIT_PER_SECOND="0.01",
                               KEY_DELIVERY_RATE_LIMIT_BURST="2") as (base, _web, _log):
        lab = make_lab("upm")
        forget_key_request_buckets()
        (tmp_path / "ca.pem").write_text(lab.bundles["upm-cait"]["ca_chain"])
        master = session(str(tmp_path / "ca.pem"), write_bundle(tmp_path, "master", lab.bundles["upm-cait"]))
        statuses = [master.get(f"{base}/api/v1/keys/upm-rect/status", timeout=10) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 503]  # 014's status for "not now"
        assert int(statuses[2].headers["Retry-After"]) > 0 and "too many requests" in statuses[2].json()["message"]
        assert statuses[1].headers["X-RateLimit-Remaining"] == "0"


def test_the_forwarder_keeps_repeated_headers_and_drops_the_clients_vouching_headers():
    """In-process, against a stand-in web listener: every Set-Cookie comes back, a client's own X-Gateway-*
    headers (in any spelling) and X-Forwarded-* never reach Django, and an oversized ETSI body is refused with 014's
    400 (not aiohttp's 413)."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from services.gateway.app import Gateway, build_app

    seen: dict = {}

    async def upstream(request: web.Request) -> web.Response:
        seen.update(headers=list(request.headers.items()), body=await request.read())
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "sessionid=a; Path=/")
        response.headers.add("Set-Cookie", "csrftoken=b; Path=/")
        return response

    async def scenario() -> None:
        web_app = web.Application()
        web_app.router.add_route("*", "/{tail:.*}", upstream)
        async with TestServer(web_app) as web_server:
            gateway_app = build_app(Gateway(threads=1, upstream=str(web_server.make_url(""))))
            async with TestClient(TestServer(gateway_app)) as client:
                response = await client.post("/accounts/login/", data=b"x=1", headers=[
                    ("X-Gateway-Client-Serial", "abc"), ("x-gateway-secret", "guess"), ("X_Gateway_Secret", "g"),
                    ("X-Gateway-Voucher", "1.00.00"), ("X-Forwarded-For", "6.6.6.6"), ("Accept", "text/html"),
                    ("Accept", "application/json")])
                assert response.status == 200
                assert response.headers.getall("Set-Cookie") == ["sessionid=a; Path=/", "csrftoken=b; Path=/"]
                too_big = await client.post("/api/v1/keys/x/enc_keys", data=b"{" + b" " * (5 << 20) + b"}")
                assert too_big.status == 400 and set(await too_big.json()) == {"message"}

    asyncio.run(scenario())
    names = [k.lower() for k, _ in seen["headers"]]
    assert not {"x-gateway-client-serial", "x-gateway-secret", "x_gateway_secret", "x-gateway-voucher"} & set(names)
    assert names.count("accept") == 2
    assert {k.lower(): v for k, v in seen["headers"]}["x-forwarded-for"] != "6.6.6.6"
    assert seen["body"] == b"x=1"


def test_kme_limits_survive_a_failed_refresh_and_a_dead_kme_is_not_asked_again_at_once(db, twin_factory, settings,
                                                                                          monkeypatch):
    """Against a real twin that this test stops (not a stand-in KME); the status calls are counted by wrapping
    the real client factory."""
    twin = twin_factory("madqci", time_scale=50.0)  # our own backend, which this test may stop
    settings.QKD_AUTO_REGISTER_TWIN = False
    registry.register_twin(twin.endpoints)
    registry.forget_status_cache()
    node = QkdNode.objects.get(node_id="CAIT")
    calls = []
    real_client_for = registry.client_for

    def counting_client_for(qkd_node):
        calls.append(qkd_node.node_id)
        return real_client_for(qkd_node)

    monkeypatch.setattr(registry, "client_for", counting_client_for)
    try:
        limits = registry.link_status(node, "sae-cait-1", "sae-rectorado-1")
        assert limits["max_key_per_request"] > 0 and calls == ["CAIT"]
        twin.stop()
        monkeypatch.setattr(registry, "STATUS_TTL_S", 0.0)  # every entry stale from now on
        assert registry.link_status(node, "sae-cait-1", "sae-rectorado-1") == limits  # refresh failed: last limits
        assert registry.link_status(node, "sae-cait-1", "sae-rectorado-1") == limits
        assert calls == ["CAIT", "CAIT"]  # the third look-up did not ask the KME that failed moments ago
        with pytest.raises(ServiceUnavailable, match="CAIT"):  # no limits on record for this pair and the KME is down
            registry.link_status(node, "sae-cait-1", "sae-ccs-1")
    finally:
        registry.forget_status_cache()
