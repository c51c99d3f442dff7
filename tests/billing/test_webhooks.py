"""Webhooks against a real HTTP receiver on loopback that fails first, then succeeds: signed, retried with
backoff (by a real Celery worker on Redis, and step by step in-process), every attempt recorded; quota
thresholds fire once per window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from billing import invoices, thresholds, webhooks
from billing.models import BillingAccount, QuotaAlert, WebhookDelivery, WebhookEndpoint
from portal.errors import BadRequest
from tenants import quota
from tenants.services import set_plan_limits
from tests.conftest import uses_postgres

from .conftest import make_book, usage, utc

ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """A loopback HTTP server answering ``codes`` in turn (then 200), keeping what it received."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.received = list(codes), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True  # the receivers are on loopback


@pytest.fixture
def receiver():
    r = Receiver([500])
    yield r
    r.close()


def test_signed_delivery_retried_with_backoff_and_recorded(billed, receiver, settings):
    settings.BILLING_WEBHOOK_BACKOFF_SECONDS = 30
    endpoint = WebhookEndpoint.objects.create(tenant=billed, url=receiver.url, events=["invoice.finalized"])
    usage(billed, "qkd_key_bits", 30_000_000, utc(2026, 2, 3))
    feb = invoices.close_due(now=utc(2026, 3, 5))[-1]
    delivery = WebhookDelivery.objects.for_tenant(billed).get(event_id=f"invoice.finalized:{feb.number}")
    t0 = timezone.now()
    first = webhooks.attempt(delivery.pk, now=t0)
    assert (first.status, first.attempts, first.last_status_code) == ("pending", 1, 500)
    assert first.next_attempt_at >= t0 + timedelta(seconds=29)  # backoff 30 s x 2^0
    assert webhooks.attempt(delivery.pk, now=t0) is None  # not due yet: nothing sent
    second = webhooks.attempt(delivery.pk, now=first.next_attempt_at)
    assert (second.status, second.attempts, second.last_status_code) == ("delivered", 2, 200)
    assert [(a.number, a.status_code) for a in second.attempt_log.all()] == [(1, 500), (2, 200)]
    assert len(receiver.received) == 2
    headers, body = receiver.received[-1]
    assert webhooks.verify(endpoint.secret, body, headers[webhooks.SIGNATURE_HEADER])
    assert not webhooks.verify("whsec_wrong", body, headers[webhooks.SIGNATURE_HEADER])
    assert not webhooks.verify(endpoint.secret, body + b" ", headers[webhooks.SIGNATURE_HEADER])
    event = json.loads(body)
    assert event["type"] == "invoice.finalized" and event["data"]["invoice"]["number"] == feb.number
    assert event["data"]["invoice"]["total"] == "10.00" and headers["QXaaS-Event"] == "invoice.finalized"
    # The same event again is not sent again.
    assert webhooks.emit("invoice.finalized", billed, {}, event_id=f"invoice.finalized:{feb.number}") == []


def test_gives_up_after_max_attempts_and_refuses_stale_signatures(billed, settings):
    settings.BILLING_WEBHOOK_MAX_ATTEMPTS = 2
    endpoint = WebhookEndpoint.objects.create(tenant=billed, url="http://127.0.0.1:9/closed")  # nothing listens
    [delivery] = webhooks.emit("quota.threshold", billed, {"x": 1}, event_id="e1")
    webhooks.attempt(delivery.pk)
    last = webhooks.attempt(delivery.pk, now=timezone.now() + timedelta(hours=1))
    assert (last.status, last.attempts, last.last_status_code) == ("failed", 2, None)
    assert "ConnectionError" in last.attempt_log.last().error
    header = webhooks.sign(endpoint.secret, b"{}", int(time.time()) - 3600)
    assert not webhooks.verify(endpoint.secret, b"{}", header)  # replayed an hour later


def test_tenant_endpoints_on_private_addresses_are_refused_by_default(billed, receiver, settings):
    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = False
    endpoint = WebhookEndpoint.objects.create(tenant=billed, url=receiver.url)  # e.g. saved before the rule
    [delivery] = webhooks.emit("quota.threshold", billed, {}, event_id="e-ssrf")
    done = webhooks.attempt(delivery.pk)
    assert done.last_status_code is None and "non-public" in done.attempt_log.get().error
    assert receiver.received == []  # nothing was sent into the operator's network
    for url in (receiver.url, "http://169.254.169.254/latest", "http://10.1.2.3/x", "ftp://example.org/x"):
        with pytest.raises(BadRequest):
            webhooks.check_url(url)
    operator = WebhookEndpoint.objects.create(tenant=None, url=receiver.url)  # the operator's own: trusted
    [op_delivery] = [d for d in webhooks.emit("quota.threshold", billed, {}, event_id="e-op")
                     if d.endpoint_id == operator.pk]
    assert webhooks.attempt(op_delivery.pk).last_status_code == 500 and endpoint.pk != operator.pk


def test_operator_endpoints_get_every_tenants_events_and_tenants_only_their_own(billed, make_tenant):
    other = make_tenant("other")
    mine = WebhookEndpoint.objects.create(tenant=billed, url="http://127.0.0.1:9/a")
    theirs = WebhookEndpoint.objects.create(tenant=other, url="http://127.0.0.1:9/b")
    operator = WebhookEndpoint.objects.create(tenant=None, url="http://127.0.0.1:9/op")
    sent = webhooks.emit("invoice.finalized", billed, {}, event_id="e2")
    assert {d.endpoint_id for d in sent} == {mine.pk, operator.pk} and theirs.pk not in {d.endpoint_id for d in sent}


def test_quota_thresholds_fire_once_per_window(billed):
    set_plan_limits(billed.plan, {"qkd_key_bits.day": 1000, "qkd_key_bits.month": 100_000})
    hook = WebhookEndpoint.objects.create(tenant=billed, url="http://127.0.0.1:9/q", events=["quota.threshold"])
    quota.consume(billed, "qkd_key_bits", 790, "q1")
    assert thresholds.check_thresholds() == []
    quota.consume(billed, "qkd_key_bits", 10, "q2")  # 800 of 1000: 80 %
    fired = thresholds.check_thresholds()
    assert [(a.quota_key, a.threshold) for a in fired] == [("qkd_key_bits.day", 80)]
    assert thresholds.check_thresholds() == []  # once per window
    quota.consume(billed, "qkd_key_bits", 200, "q3")  # 1000 of 1000
    assert [(a.quota_key, a.threshold) for a in thresholds.check_thresholds()] == [("qkd_key_bits.day", 100)]
    assert QuotaAlert.objects.for_tenant(billed).count() == 2
    payloads = [d.payload["data"] for d in WebhookDelivery.objects.for_tenant(billed).filter(endpoint=hook)
                .order_by("created_at")]
    assert [(p["quota"], p["threshold_percent"], p["used"]) for p in payloads] == [
        ("qkd_key_bits.day", 80, 800), ("qkd_key_bits.day", 100, 1000)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not (uses_postgres() and os.environ.get("REDIS_URL")), reason="needs PostgreSQL and Redis")
def test_a_celery_worker_retries_a_failed_delivery(make_tenant, plan, receiver, tmp_path):
    tenant = make_tenant("hooked")
    make_book(plan, utc(2026, 1, 1))
    BillingAccount.objects.create(tenant=tenant, starts_at=utc(2026, 2, 1))
    usage(tenant, "qkd_key_bits", 30_000_000, utc(2026, 2, 3))
    endpoint = WebhookEndpoint.objects.create(tenant=tenant, url=receiver.url)
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}",
           "DJANGO_SETTINGS_MODULE": "portal.settings.base", "QXAAS_VAR_DIR": str(tmp_path),
           "BILLING_WEBHOOK_BACKOFF_SECONDS": "1", "BILLING_WEBHOOK_ALLOW_PRIVATE": "true"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO",
         "-Q", "celery"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        invoices.close_due(now=utc(2026, 3, 5))  # finalizes February: the event is enqueued on commit
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = list(WebhookDelivery.objects.unscoped().filter(endpoint=endpoint).values_list("status", flat=True))
            if states and all(s == "delivered" for s in states):
                break
            time.sleep(0.3)
        else:
            worker.terminate()
            pytest.fail("the worker did not deliver:\n" + worker.communicate(timeout=20)[0][-3000:])
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
    [retried] = WebhookDelivery.objects.unscoped().filter(endpoint=endpoint)
    assert retried.attempts == 2  # the first answer was a 500: the worker retried after the backoff
    assert [a.status_code for a in retried.attempt_log.all()] == [500, 200]
    assert retried.attempt_log.last().at - retried.attempt_log.first().at >= timedelta(seconds=1)
    assert all(webhooks.verify(endpoint.secret, body, h[webhooks.SIGNATURE_HEADER]) for h, body in receiver.received)
