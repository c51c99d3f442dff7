"""Structured logs and request IDs: JSON lines with the request ID and tenant, the ID in the X-Request-ID header
and in error bodies; and, with LOG_FORMAT=json, still no key material or token secret in any log line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import requests
from django.test import Client

from portal import logs
from services import registry
from tests.services.test_gateway_robustness import database_dump, encodings
from tests.services.test_mtls import write_bundle

from .conftest import parse
from .stack import web_and_gateway


@pytest.fixture
def json_lines():
    """Everything logged during the test, through the portal's JSON formatter and context filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_request_id_in_header_error_body_and_log_lines(two_tenants, json_lines):
    client = two_tenants["ca"]
    ok = client.get("/api/quotas/")
    assert ok.status_code == 200 and len(ok["X-Request-ID"]) == 32
    missing = client.get("/api/saes/999999/", HTTP_X_REQUEST_ID="edge-req-0001")
    assert missing.status_code == 404
    rid = missing["X-Request-ID"]
    assert rid != "edge-req-0001" and len(rid) == 32  # the server's own ID: a caller's is never adopted
    assert missing.json()["error"]["request_id"] == rid
    evil = Client().get("/api/me/", HTTP_X_REQUEST_ID='x" injected\r\nSet-Cookie: a=b')
    assert evil.status_code == 401 and len(evil["X-Request-ID"]) == 32
    assert evil.json()["error"]["request_id"] == evil["X-Request-ID"]
    # Django's own line for the 404 names the request, the edge's ID (nginx's $request_id) and the tenant.
    lines = [line for line in json_lines() if line.get("request_id") == rid]
    assert lines and all(line["tenant"] == "alpha" and line["edge_request_id"] == "edge-req-0001" for line in lines)
    assert not any("injected" in str(line) for line in json_lines())  # an unsafe caller ID is not even logged
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    # Outside a request nothing is bound.
    logging.getLogger("test.after").warning("after the request")
    after = json_lines()[-1]
    assert after["message"] == "after the request" and "request_id" not in after and "tenant" not in after


def test_json_formatter_keeps_extra_fields_and_exceptions():
    record = logging.LogRecord("qxaas.test", logging.ERROR, __file__, 1, "order %s failed", ("o-1",), None)
    record.order_id = "5b0c"
    record.peer = object()
    with logs.scope(request_id="r-12345678", tenant="alpha"):
        logs.ContextFilter().filter(record)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "order o-1 failed" and entry["order_id"] == "5b0c"
    assert entry["request_id"] == "r-12345678" and entry["tenant"] == "alpha"
    assert "ValueError: boom" in entry["exc"] and entry["peer"].startswith("<object")


def test_json_logs_of_the_live_listeners_hold_no_key_or_token(transactional_db, backend_twin, make_lab, tmp_path):
    """The web listener and the key gateway as deployed (LOG_FORMAT=json, DEBUG): every line is one JSON object,
    request lines carry the request ID, and no key (any spelling) nor token secret is in them; the gateway's
    /gateway/metrics and the web's /metrics sum their processes (PROMETHEUS_MULTIPROC_DIR)."""
    registry.register_twin(backend_twin.endpoints)
    lab = make_lab("jsonlab")
    token = lab.client.token_secret
    delivered: dict[str, str] = {}
    gateway_rids: list[str] = []
    with web_and_gateway(tmp_path, LOG_FORMAT="json", LOG_LEVEL="DEBUG") as stack:
        ca = tmp_path / "ca.pem"
        ca.write_text(lab.bundles["jsonlab-cait"]["ca_chain"])
        with requests.Session() as master, requests.Session() as slave:
            master.trust_env = slave.trust_env = False
            master.verify = slave.verify = str(ca)
            master.cert = write_bundle(tmp_path, "master", lab.bundles["jsonlab-cait"])
            slave.cert = write_bundle(tmp_path, "slave", lab.bundles["jsonlab-rect"])
            for _ in range(3):
                r = master.post(f"{stack.base}/api/v1/keys/jsonlab-rect/enc_keys", json={"number": 2, "size": 256},
                                headers={"X-Request-ID": "trace-enc-0001"}, timeout=30)
                assert r.status_code == 200 and len(r.headers["X-Request-ID"]) == 32, r.text
                gateway_rids.append(r.headers["X-Request-ID"])
                keys = r.json()["keys"]
                delivered |= {k["key_ID"]: k["key"] for k in keys}
                r = slave.post(f"{stack.base}/api/v1/keys/jsonlab-cait/dec_keys",
                               json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}, timeout=30)
                assert r.status_code == 200, r.text
            auth = {"Authorization": f"Bearer {token}"}
            simple = master.get(f"{stack.base}/api/qkd/keys?src=CAIT&dst=Rectorado", headers=auth, timeout=30)
            assert simple.status_code == 200, simple.text
            delivered[simple.json()["key_ID"]] = simple.json()["key"]
            bad = master.get(f"{stack.base}/api/me/", headers={"Authorization": f"Bearer {token[:-3]}xyz"}, timeout=30)
            assert bad.status_code == 401 and bad.json()["error"]["request_id"] == bad.headers["X-Request-ID"]
            # /metrics through the gateway is a proxied request: refused without the token.
            assert master.get(f"{stack.base}/metrics", timeout=30).status_code == 403
            gateway = parse(master.get(f"{stack.base}/gateway/metrics", timeout=30).text)
        web = parse(requests.get(f"{stack.web}/metrics", timeout=30).text)
    text = stack.log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line[:200]}")
    assert any(e.get("edge_request_id") == "trace-enc-0001" and e.get("request_id") for e in entries)
    assert any(e["logger"] == "gunicorn.access" and e.get("request_id") for e in entries)
    # The key gateway's access lines name the request (its X-Request-ID) and the tenant, as the web's do.
    access = {e["request_id"]: e for e in entries if e["logger"] == "services.gateway.access" and "request_id" in e}
    for rid in gateway_rids:
        assert access[rid].get("tenant") == "jsonlab" and "enc_keys" in access[rid]["message"], access.get(rid)
    assert all(e.get("tenant") in (None, "jsonlab") for e in entries)
    for key_id, key in delivered.items():
        for form in encodings(key):
            assert form not in text, f"key {key_id} in the JSON logs"
    assert token.split(".", 1)[1] not in text
    dump, _ = database_dump()
    assert token.split(".", 1)[1] not in dump
    # The gateway counted its ETSI requests over its processes; the web listener its forwarded ones.
    enc = sum(v for lab_, v in gateway["qxaas_gateway_requests_total"] if lab_["endpoint"] == "enc_keys")
    assert enc == 3
    forwarded = [lab_ for lab_, _ in web["qxaas_http_requests_total"] if lab_["route"] == "api/qkd/keys"]
    assert forwarded
    assert not any(lab_["endpoint"] == "enc_keys" for lab_, _ in web.get("qxaas_gateway_requests_total", []))


def test_a_task_carries_the_request_id_of_the_request_that_queued_it():
    from types import SimpleNamespace

    from celery import signals

    headers: dict = {}
    with logs.scope(request_id="req-queued-0001"):
        signals.before_task_publish.send(sender="tenants.tasks.expire_api_tokens", headers=headers, body=None)
    assert headers["qxaas_request_id"] == "req-queued-0001"
    class Task:  # what Celery hands the signals: the task, its name and its request (with our header)
        name = "services.tasks.provision"
        request = SimpleNamespace(qxaas_request_id="req-queued-0001")

        def run(self, session_uuid: str) -> None: ...

    task = Task()
    signals.task_prerun.send(sender=task, task_id="t-1", task=task, args=("9f1c",), kwargs={})  # by position
    try:
        assert (logs.current("request_id"), logs.current("task"), logs.current("order_id")) == \
            ("req-queued-0001", "services.tasks.provision", "9f1c")
    finally:
        signals.task_postrun.send(sender=task, task_id="t-1", task=task, state="SUCCESS")
    assert logs.current("request_id") is None and logs.current("task") is None
