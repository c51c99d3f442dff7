"""Issue 13, finding 4: a tenant's streamed entropy downloads hold web worker threads, so they are limited per
tenant (``QRNG_STREAMS_PER_TENANT``); the one over the limit is refused before anything is reserved or drawn.
tests/services/test_slow_clients.py shows it against gunicorn as ``make run`` runs it."""

from __future__ import annotations

import pytest


@pytest.mark.django_db
def test_a_stream_over_the_tenants_concurrent_downloads_is_refused_and_charged_nothing(make_entropy_lab,
                                                                                        use_sources, settings):
    from tenants import slots

    use_sources([{"name": "urandom", "kind": "device", "path": "/dev/urandom"}])
    lab = make_entropy_lab("lab")
    held = [slots.acquire("entropy-stream", lab.tenant.pk, settings.QRNG_STREAMS_PER_TENANT, 60)
            for _ in range(settings.QRNG_STREAMS_PER_TENANT)]
    try:
        refused = lab.client.get("/api/entropy", {"bytes": 100_000, "format": "raw"})
        assert refused.status_code == 429 and refused["Retry-After"], refused.content
        assert refused.json()["error"]["code"] == "rate_limited"
        assert lab.ledger() == []
        # Bounded requests (JSON formats) hold no thread for long: they are not limited by these slots.
        assert lab.client.get("/api/entropy", {"bytes": 32, "format": "hex"}).status_code == 200
    finally:
        for slot in held:
            slot.release()
    served = lab.client.get("/api/entropy", {"bytes": 100_000, "format": "raw"})
    assert served.status_code == 200 and len(b"".join(served.streaming_content)) == 100_000
    served.close()
    assert slots.acquire("entropy-stream", lab.tenant.pk, 1, 60) is not None  # closed: its slot is back
