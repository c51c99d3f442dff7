"""ETSI 004 key streams through the portal, against the madqci twin (HTTPS, mTLS), CAIT -> Rectorado via CCS.

Figures (one run, the portal in-process on SQLite, both SAEs reading alternately, chunk after chunk):
  1. rate: a stream opened at Max_bps = R; the bits/s both SAEs got once paced by the stream (second half of
     the run, after the one-second burst), against R (ratio), and whether every index gave both identical bytes;
  2. overhead: with Max_bps at the path's capacity, chunks/s through the portal against the baseline measured in
     the same run, the same SAE pair reading a backend 004 stream directly from the twin's KMEs;
  3. filler: get_key latency (p50) of the peer SAE for chunks the Celery filler made ahead at the backend,
     against chunks made on demand (ratio).

    .venv/bin/python bench/etsi004_streams.py [--seconds 4] [--rate 20000] [--chunk 256]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def setup_portal(var: Path):
    # The default rate limits stay on: 004 calls use the key-delivery bucket (tenants.ratelimit), which must not
    # throttle a stream at its path's capacity (a 429 fails the run: `PortalStream.call` asserts 200).
    os.environ.update({"DJANGO_SETTINGS_MODULE": "portal.settings.test", "QXAAS_VAR_DIR": str(var),
                       "QKD_AUTO_REGISTER_TWIN": "false"})
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)  # SQLite and in-memory cache under a temporary directory
    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()
    call_command("migrate", verbosity=0)


def make_lab(endpoints: dict):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from services import registry
    from services.saes import register_sae
    from tenants.models import Membership, Plan, Role, Tenant
    from tenants.services import set_plan_limits
    from tenants.tokens import issue_token

    registry.register_twin(endpoints)
    plan = Plan.objects.create(name="Bench", slug="bench")
    set_plan_limits(plan, {"qkd_key_bits.day": -1, "qkd_key_bits.month": -1, "key_streams": 10})
    tenant = Tenant.objects.create(name="Bench", slug="bench", plan=plan)
    user = get_user_model().objects.create_user("bench", "bench@example.org", "bench-password-1")
    Membership.objects.create(tenant=tenant, user=user, role=Role.OWNER)
    register_sae(tenant, "b-cait", "CAIT", with_certificate=False)
    register_sae(tenant, "b-rect", "Rectorado", with_certificate=False)
    _, secret = issue_token(user, tenant, "bench", ["keys:read", "keys:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


class PortalStream:
    def __init__(self, client, qos: dict):
        self.client = client
        opened = self.call("b-cait", "open_connect", source="sae://b-cait", destination="sae://b-rect", QoS=qos)
        assert opened["status"] == 1, opened
        self.ksid = opened["Key_stream_ID"]
        self.qos = opened["QoS"]
        joined = self.call("b-rect", "open_connect", source="sae://b-rect", destination="sae://b-cait",
                           Key_stream_ID=self.ksid)
        assert joined["status"] == 0, joined

    def call(self, sae: str, op: str, **body) -> dict:
        response = self.client.post(f"/api/etsi004/{op}", body, format="json", HTTP_X_SAE_ID=sae)
        assert response.status_code == 200, response.content
        return response.json()

    def get_key(self, sae: str, index: int) -> dict:
        return self.call(sae, "get_key", Key_stream_ID=self.ksid, index=index)

    def close(self) -> None:
        self.call("b-cait", "close", Key_stream_ID=self.ksid)


class DirectStream:
    """The baseline: a backend 004 stream read by the twin's own SAEs with their certificates."""

    def __init__(self, twin, qos: dict):
        self.twin = twin
        self.sessions = {sae: twin.session(sae) for sae in ("sae-cait-1", "sae-rectorado-1")}
        opened = self.call("sae-cait-1", "open_connect", {"source": "sae-cait-1", "destination": "sae-rectorado-1",
                                                         "QoS": qos})
        self.ksid = opened["Key_stream_ID"]
        self.call("sae-rectorado-1", "open_connect", {"source": "sae-rectorado-1", "destination": "sae-cait-1",
                                                      "Key_stream_ID": self.ksid})

    def call(self, sae: str, op: str, body: dict) -> dict:
        url = self.twin.url(self.twin.node_of(sae)) + f"/api/{op}"
        response = self.sessions[sae].post(url, json=body, timeout=20)
        response.raise_for_status()
        return response.json()

    def get_key(self, sae: str, index: int) -> dict:
        return self.call(sae, "get_key", {"Key_stream_ID": self.ksid, "index": index})


def read_both(stream, saes: tuple[str, str], seconds: float) -> tuple[int, bool, list[float]]:
    """Both SAEs read chunk after chunk for ``seconds``; returns chunks both got, whether all matched, and when
    each chunk pair was complete."""
    index, identical, times, deadline = 0, True, [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        a, b = stream.get_key(saes[0], index), stream.get_key(saes[1], index)
        if a["status"] != 0 or b["status"] != 0:
            continue  # ahead of Max_bps past the Timeout: ask again
        # Compare digests only; the chunks themselves are dropped at once.
        identical &= hashlib.sha256(a["key_buffer"].encode()).digest() == hashlib.sha256(
            b["key_buffer"].encode()).digest()
        times.append(time.monotonic())
        index += 1
    return index, identical, times


def peer_latency(stream, count: int) -> float:
    """p50 of the peer SAE's get_key, asking first (so the chunk must already be at, or come to, its KME)."""
    samples = []
    for index in range(count):
        t0 = time.perf_counter()
        assert stream.get_key("b-rect", index)["status"] == 0
        samples.append(time.perf_counter() - t0)
        stream.get_key("b-cait", index)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=int, default=20000, help="requested Max_bps for figure 1")
    parser.add_argument("--chunk", type=int, default=256, help="Key_chunk_size (bytes) for figure 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        setup_portal(Path(tmp) / "var")
        from services import streams
        from tests.twin.conftest import start_twin

        twin = start_twin(Path(tmp) / "twin", "madqci", time_scale=50.0)
        try:
            twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=200, timeout=30)
            client = make_lab(twin.endpoints)
            base_qos = {"Key_chunk_size": 32, "Min_bps": 256, "Timeout": 2000, "TTL": 600}

            # 1. the requested rate: after the one-second burst, chunks come at Max_bps
            chunk_bits = args.chunk * 8
            stream = PortalStream(client, {**base_qos, "Key_chunk_size": args.chunk, "Max_bps": args.rate})
            chunks, identical, times = read_both(stream, ("b-cait", "b-rect"), args.seconds)
            stream.close()
            # Measured over the second half, when the reader is paced by the stream, not catching up after the burst.
            half = len(times) // 2
            steady = (len(times) - 1 - half) * chunk_bits / (times[-1] - times[half]) if len(times) > 4 else 0.0
            print(f"rate: requested Max_bps {args.rate} in {args.chunk}-byte chunks; both SAEs got {chunks} "
                  f"chunks in {args.seconds:.1f} s, {steady:.0f} b/s over the second half, "
                  f"ratio {steady / args.rate:.3f}; identical chunks: {identical}")

            # 2. overhead against the direct backend stream, at the path's capacity
            offer = client.post("/api/etsi004/open_connect", {"source": "sae://b-cait", "destination": "sae://b-rect",
                                "QoS": {**base_qos, "Min_bps": 10**12, "Max_bps": 10**12}}, format="json",
                                HTTP_X_SAE_ID="b-cait").json()["QoS"]["Max_bps"]
            capacity = {**base_qos, "Max_bps": offer}
            direct = DirectStream(twin, capacity)
            direct_chunks, direct_identical, _ = read_both(direct, ("sae-cait-1", "sae-rectorado-1"), args.seconds)
            portal = PortalStream(client, capacity)
            portal_chunks, portal_identical, _ = read_both(portal, ("b-cait", "b-rect"), args.seconds)
            portal.close()
            print(f"overhead: path capacity {offer} b/s; chunk pairs/s direct from the twin (baseline) "
                  f"{direct_chunks / args.seconds:.1f}, through the portal {portal_chunks / args.seconds:.1f}, "
                  f"ratio {portal_chunks / max(direct_chunks, 1):.3f} "
                  f"(identical: {direct_identical and portal_identical})")

            # 3. filler: chunks made ahead vs on demand, peer SAE asking first
            ahead = PortalStream(client, {**base_qos, "Max_bps": offer})
            made = streams.fill_streams(budget_s=30)
            with_fill = peer_latency(ahead, streams.MAX_AHEAD_CHUNKS)
            ahead.close()
            on_demand = PortalStream(client, {**base_qos, "Max_bps": offer})
            without_fill = peer_latency(on_demand, streams.MAX_AHEAD_CHUNKS)
            on_demand.close()
            print(f"filler: made {made} chunks ahead; peer get_key p50 {with_fill * 1000:.1f} ms made ahead vs "
                  f"{without_fill * 1000:.1f} ms on demand (baseline), ratio {with_fill / without_fill:.3f}")
        finally:
            twin.stop()


if __name__ == "__main__":
    main()
