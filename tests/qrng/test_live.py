"""Entropy over a real HTTP server (pytest-django's live server): `curl -o` downloads and a cut stream.

Streaming behaviour (Content-Length, what happens when the client hangs up, when the server calls the
response's close()) only shows over a socket, not through the test client.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from qrng.health import HealthTestConfig, startup_bytes

pytestmark = pytest.mark.django_db(transaction=True)

STARTUP = startup_bytes(HealthTestConfig())
MiB = 1 << 20


@pytest.fixture
def lab(make_entropy_lab):
    return make_entropy_lab("lab")


@pytest.fixture
def file_source(use_sources, random_file):
    path, data = random_file(24 * MiB)
    use_sources([{"name": "qrng", "kind": "device", "path": path}])
    return data


def test_curl_o_downloads_exactly_one_mebibyte_and_the_ledger_matches(live_server, lab, file_source, tmp_path):
    out, headers = tmp_path / "x.bin", tmp_path / "headers.txt"
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {lab.client.token_secret}",
         f"{live_server.url}/api/entropy?bytes=1048576&format=raw", "-o", str(out), "-D", str(headers)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size == MiB
    assert out.read_bytes() == file_source[STARTUP : STARTUP + MiB]
    head = headers.read_text().lower()
    assert "content-type: application/octet-stream" in head and "x-entropy-simulated: false" in head
    assert "x-entropy-source: qrng" in head and "x-request-id: " in head
    assert [r.quantity for r in lab.ledger()] == [MiB]


def _wait_for_ledger_rows(lab, rows: int, timeout: float = 30.0) -> list:
    """The server thread records the release when it notices the hang-up; wait for it (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        ledger = lab.ledger()
        if len(ledger) >= rows or time.monotonic() > deadline:
            return ledger
        time.sleep(0.05)


def test_a_download_cut_by_the_client_is_charged_only_for_what_left_the_pool(live_server, lab, file_source):
    requested = 16 * MiB
    with requests.get(f"{live_server.url}/api/entropy?bytes={requested}&format=raw", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {lab.client.token_secret}"}) as response:
        assert response.status_code == 200 and response.headers["Content-Length"] == str(requested)
        first = response.raw.read(MiB)
    assert first == file_source[STARTUP : STARTUP + MiB]
    ledger = _wait_for_ledger_rows(lab, 2)
    assert len(ledger) == 2, "the unserved remainder was not released"
    consumed, released = ledger
    assert consumed.quantity == requested and consumed.idempotency_key.startswith("entropy:")
    assert released.idempotency_key == "entropy-release:" + consumed.idempotency_key.split(":", 1)[1]
    served = requested + released.quantity
    assert MiB <= served < requested
    # What was charged is exactly what left the source: the next request starts right after it.
    nxt = lab.get("/api/entropy?format=hex&bytes=64").json()["data"]
    assert bytes.fromhex(nxt) == file_source[STARTUP + served : STARTUP + served + 64]
    assert lab.charged() == served + 64
