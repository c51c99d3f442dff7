"""Issue 13, finding 4: one tenant's slow clients do not take the shared web workers from the other tenants.

The web listener runs exactly as ``make run`` starts it (``portal.runstack``'s gunicorn command: 2 workers x 4
threads, the portal's gunicorn config), on the test's PostgreSQL and Redis (the tenants' slots are shared by the
two worker processes through Redis), with the real twin as the KMEs. Tenant A has 8 clients reading raw entropy
downloads that never read their body and 8 clients asking ETSI 004 get_key for chunks ahead of their stream's
Max_bps (each such call waits); tenant B's requests (an API call, an entropy draw, a get_key of its own stream)
are still answered. Without the per-tenant limits the 8 downloads alone hold all 8 threads and B waits forever.

The key gateway's proxy to the web listener gives up on a listener that does not answer (its read timeout).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from portal.runstack import commands, etsi_https_command
from services import pki
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides
from tests.services.listener import _wait, free_port

ROOT = Path(__file__).resolve().parents[2]
SLOW = 8
DOWNLOAD_BYTES = 64 << 20  # far more than the socket buffers hold: the server blocks writing it


def server_env(**extra: str) -> dict[str, str]:
    db = connection.settings_dict
    return {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}",
            "QKD_AUTO_REGISTER_TWIN": "false", "QXAAS_VAR_DIR": str(settings.VAR_DIR),
            "DJANGO_SETTINGS_MODULE": "portal.settings.base", **extra}


@contextlib.contextmanager
def make_run_web(tmp_path: Path, **extra_env: str):
    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.skip("the web listener shares the database and Redis with the test: PostgreSQL and Redis")
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("w") as out:
        proc = subprocess.Popen(commands(port)["web"], cwd=ROOT, env=server_env(**extra_env), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/healthz", [proc], log)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def slow_download(port: int, token: str) -> tuple[socket.socket, str]:
    """Ask for a large raw download and read only the status line and headers (a reader that stalls)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/entropy?bytes={DOWNLOAD_BYTES}&format=raw HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        got = sock.recv(4096)
        assert got, "the web listener closed the connection"
        data += got
    head, body = data.split(b"\r\n\r\n", 1)
    text = head.decode("latin-1")
    if not text.startswith("HTTP/1.1 200"):  # a refusal: its whole (small) body
        length = next(int(line.split(":", 1)[1]) for line in text.split("\r\n")
                      if line.lower().startswith("content-length:"))
        while len(body) < length:
            got = sock.recv(4096)
            assert got, "the web listener closed the connection"
            body += got
        return sock, text + "\r\n\r\n" + body.decode()
    return sock, text + "\r\n\r\n"


def open_stream(url: str, token: str, src: str, dst: str, qos: dict) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"source": f"sae://{src}", "destination": f"sae://{dst}", "QoS": {"Key_chunk_size": 32, **qos}}
    opened = requests.post(f"{url}/api/etsi004/open_connect", json=body, headers={**headers, "X-SAE-ID": src},
                           timeout=30).json()
    assert opened["status"] == 1, opened
    joined = requests.post(f"{url}/api/etsi004/open_connect", json={
        "source": f"sae://{dst}", "destination": f"sae://{src}", "Key_stream_ID": opened["Key_stream_ID"]},
        headers={**headers, "X-SAE-ID": dst}, timeout=30).json()
    assert joined["status"] == 0, joined
    return opened["Key_stream_ID"]


@pytest.mark.django_db(transaction=True)
def test_eight_slow_clients_of_one_tenant_do_not_stop_another_tenants_requests(make_lab, client_for, tmp_path):
    a, b = make_lab("slowa"), make_lab("fastb")
    tokens = {}
    for lab in (a, b):
        set_quota_overrides(lab.tenant, {"entropy_bytes.day": -1, "qkd_key_bits.day": -1, "key_streams": 4})
        tokens[lab] = client_for(lab.owner, lab.tenant, ["keys:read", "keys:write", "entropy:read"]).token_secret
    sources = json.dumps([{"name": "urandom", "kind": "device", "path": "/dev/urandom"}])
    # The send timeout is longer than the test: the stalled downloads hold their threads throughout (worst case).
    with make_run_web(tmp_path, QRNG_SOURCES=sources, QRNG_POOL_KEY=f"qxaas:test-slow:{uuid.uuid4().hex}",
                      QRNG_STREAM_SEND_TIMEOUT_S="300") as (port, log):
        url = f"http://127.0.0.1:{port}"
        # A's stream: 2560 b/s in 256-bit chunks (10 a second); its get_key callers run ahead of it and wait.
        a_ksid = open_stream(url, tokens[a], "slowa-cait", "slowa-rect", {"Max_bps": 2560, "Min_bps": 256,
                                                                            "Timeout": 10000})
        b_ksid = open_stream(url, tokens[b], "fastb-cait", "fastb-rect", {"Max_bps": 40000, "Timeout": 10000})

        downloads = [slow_download(port, tokens[a]) for _ in range(SLOW)]
        admitted = [head for _sock, head in downloads if head.startswith("HTTP/1.1 200")]
        refused = [head for _sock, head in downloads if head.startswith("HTTP/1.1 429")]
        assert len(admitted) == 2 and len(refused) == SLOW - 2, [h[:200] for _s, h in downloads]
        body = json.loads(refused[0].split("\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "rate_limited" and "2 streamed entropy downloads" in body["error"]["message"]
        assert "Retry-After" in refused[0]

        stop, answers, errors = threading.Event(), [], []

        def waiter(j: int) -> None:
            index, session = j, requests.Session()
            headers = {"Authorization": f"Bearer {tokens[a]}", "X-SAE-ID": "slowa-cait"}
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = session.get(f"{url}/api/etsi004/get_key", params={"Key_stream_ID": a_ksid, "index": index},
                                    headers=headers, timeout=60)
                except requests.RequestException as exc:
                    errors.append(repr(exc))
                    return
                answer = r.json() if r.status_code == 200 else {"http": r.status_code}
                answers.append(answer)
                if answer.get("status") == 0:
                    index += SLOW
                stop.wait(0.05)

        waiters = [threading.Thread(target=waiter, args=(j,), daemon=True) for j in range(SLOW)]
        for thread in waiters:
            thread.start()
        try:
            b_headers = {"Authorization": f"Bearer {tokens[b]}"}
            for _round in range(5):
                me = requests.get(f"{url}/api/me/", headers=b_headers, timeout=20)
                assert me.status_code == 200, me.content
                draw = requests.get(f"{url}/api/entropy", params={"bytes": 32, "format": "hex"}, headers=b_headers,
                                    timeout=20)
                assert draw.status_code == 200 and len(draw.json()["data"]) == 64, draw.content
                chunk = requests.get(f"{url}/api/etsi004/get_key", params={"Key_stream_ID": b_ksid},
                                     headers={**b_headers, "X-SAE-ID": "fastb-cait"}, timeout=20).json()
                assert chunk["status"] == 0, chunk
        finally:
            stop.set()
            for thread in waiters:
                thread.join(timeout=90)
        assert not errors, errors
        # A's callers were served within its slots: chunks, "due after the Timeout" (6), and "not available yet,
        # ask again" (2) for those that found both of A's waiting slots taken (how many of each depends on the
        # timing; test_a_get_key_that_would_wait_without_a_free_slot_is_answered_at_once pins that down).
        statuses = collections.Counter((a.get("status"), a.get("message", "")[:40]) for a in answers)
        assert {status for status, _ in statuses} <= {0, 2, 6} and (0, "") in statuses, statuses
        delivered = sum(answer.get("status") == 0 for answer in answers)
        key_bits = UsageRecord.objects.for_tenant(a.tenant).filter(meter="qkd_key_bits")
        assert sum(key_bits.values_list("quantity", flat=True)) == 256 * delivered  # refusals cost nothing

        # The refused downloads charged nothing: A's ledger has the two admitted ones only.
        entropy = UsageRecord.objects.for_tenant(a.tenant).filter(meter="entropy_bytes")
        assert entropy.filter(kind=UsageRecord.Kind.CONSUME).count() == 2
        # Hanging up ends them: their slots and their unserved bytes come back, and A can download again.
        for sock, _head in downloads:
            sock.close()
        deadline = time.monotonic() + 60
        while entropy.filter(kind=UsageRecord.Kind.RELEASE).count() < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        again = requests.get(f"{url}/api/entropy", params={"bytes": 1000, "format": "raw"},
                             headers={"Authorization": f"Bearer {tokens[a]}"}, timeout=20)
        assert again.status_code == 200 and len(again.content) == 1000


def test_the_gateway_gives_up_on_a_web_listener_that_does_not_answer(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the gateway shares the database with the test: PostgreSQL")
    # A web listener that accepts and never answers (a stuck upstream).
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            for _ in range(16):
                accepted.append(stuck.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            etsi_https_command(port, upstream=f"http://127.0.0.1:{stuck.getsockname()[1]}"), cwd=ROOT,
            env=server_env(GATEWAY_UPSTREAM_READ_TIMEOUT_S="1"), stdout=out, stderr=subprocess.STDOUT)
    try:
        ca = str(pki.pki_dir() / "ca.crt")
        _wait(f"https://127.0.0.1:{port}/gateway/healthz", [proc], log, verify=ca)
        answer = requests.get(f"https://127.0.0.1:{port}/api/me/", verify=ca, timeout=30)
        assert answer.status_code == 503, answer.content
        assert answer.json()["error"]["code"] == "service_unavailable" and answer.headers["Retry-After"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        stuck.close()
        for sock in accepted:
            sock.close()


# -- the slots themselves, in-process (deterministic: the slots are taken by the test) ----------------------------
def call(lab, sae: str, op: str, method: str = "post", **data):
    send = getattr(lab.client, method)
    return send(f"/api/etsi004/{op}", data=data, format="json" if method == "post" else None, HTTP_X_SAE_ID=sae)


@pytest.mark.django_db
def test_a_get_key_that_would_wait_without_a_free_slot_is_answered_at_once(make_lab, settings):
    from services.models import KeyStream
    from tenants import slots

    lab = make_lab("upm")
    opened = call(lab, "upm-cait", "open_connect", source="sae://upm-cait", destination="sae://upm-rect",
                  QoS={"Key_chunk_size": 32, "Max_bps": 256, "Min_bps": 256, "Timeout": 10000}).json()
    assert opened["status"] == 1 and opened["QoS"]["Timeout"] == 1000  # granted as at most 1 s
    ksid = opened["Key_stream_ID"]
    assert call(lab, "upm-rect", "open_connect", source="sae://upm-rect", destination="sae://upm-cait",
                Key_stream_ID=ksid).json()["status"] == 0
    held = [slots.acquire("etsi004-wait", lab.tenant.pk, settings.ETSI004_WAITING_CALLS_PER_TENANT, 60)
            for _ in range(settings.ETSI004_WAITING_CALLS_PER_TENANT)]
    assert all(held) and slots.acquire("etsi004-wait", lab.tenant.pk, 2, 60) is None
    try:
        # 256 b/s in 256-bit chunks: chunk 1 falls due a second after the join, within the Timeout: it would
        # wait, but the tenant's waiting slots are all taken by other calls.
        busy = call(lab, "upm-cait", "get_key", "get", Key_stream_ID=ksid, index=1).json()
        assert busy["status"] == 2 and "ask again" in busy["message"] and "key_buffer" not in busy
        assert not UsageRecord.objects.for_tenant(lab.tenant).filter(meter="qkd_key_bits").exists()
        # Another tenant's slots are its own.
        other = slots.acquire("etsi004-wait", uuid.uuid4().hex, 2, 60)
        assert other is not None
        other.release()
    finally:
        for slot in held:
            slot.release()
    # With a slot free the same call waits (at most the granted Timeout) and gets its chunk.
    chunk = call(lab, "upm-cait", "get_key", "get", Key_stream_ID=ksid, index=1).json()
    assert chunk["status"] == 0 and chunk["index"] == 1
    stream = KeyStream.objects.for_tenant(lab.tenant).get(ksid=ksid)
    assert stream.chunks_metered == 1
    assert slots.acquire("etsi004-wait", lab.tenant.pk, 2, 60) is not None  # the call gave its slot back
