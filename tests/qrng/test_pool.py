"""The buffer pool: bytes served exactly once (threads, and Redis when REDIS_URL is set), streaming in bounded
memory, provenance, alarms, and the formats drawing through the pool."""

import os
import random
import threading
import time
import tracemalloc
import uuid

import numpy as np
import pytest

from qrng import formats
from qrng.pool import EntropyPool, EntropyPoolEmpty, LocalBackend, PoolFiller, RedisBackend
from qrng.sources import (
    DeviceSource,
    HealthTestedSource,
    HttpSource,
    NoHealthyEntropySource,
    SourceEntry,
    SourceSet,
    TwinSource,
)

from .conftest import ApplianceHandler


def device_set(path, on_alarm=None):
    return SourceSet([SourceEntry(HealthTestedSource(DeviceSource("dev", str(path)), on_alarm=on_alarm))])


@pytest.fixture
def random_device(tmp_path):
    data = np.random.default_rng(31).bytes(8 << 20)
    (tmp_path / "qrandom0").write_bytes(data)
    return tmp_path / "qrandom0", data


BLOCK = 64  # request and chunk sizes are multiples of BLOCK, so every served block is a device block


def served_offsets(pieces, data):
    """The device offset of every 64-byte block served (random data: each block is unique in the device).

    A response may join parts of several chunks (other consumers pop in between), so pieces are checked
    block by block rather than as one contiguous range.
    """
    index = {data[i : i + BLOCK]: i for i in range(0, len(data), BLOCK)}
    offsets = []
    for piece in pieces:
        assert len(piece) % BLOCK == 0
        for i in range(0, len(piece), BLOCK):
            offset = index.get(piece[i : i + BLOCK])
            assert offset is not None, "served bytes that the device never produced"
            offsets.append(offset)
    return offsets


def assert_served_once(pieces, data):
    offsets = served_offsets(pieces, data)
    assert len(set(offsets)) == len(offsets), "the same bytes were served twice"
    assert min(offsets) >= 1024  # the start-up test's samples are never served
    return offsets


def consume_concurrently(pool, consumers=4, requests=150, seed=0):
    pieces = [[] for _ in range(consumers)]

    def consumer(i):
        rng = random.Random(seed + i)
        for _ in range(requests):
            data, _ = pool.take(BLOCK * rng.randint(1, 94))
            pieces[i].append(data)

    threads = [threading.Thread(target=consumer, args=(i,)) for i in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return [p for per_consumer in pieces for p in per_consumer]


def test_concurrent_consumers_never_get_the_same_bytes(random_device):
    path, data = random_device
    pool = EntropyPool(device_set(path), chunk_bytes=BLOCK * 157, target_bytes=BLOCK * 157 * 20)
    pool.fill()
    assert pool.level() == BLOCK * 157 * 20
    pieces = consume_concurrently(pool)  # ~1.8 MB: several refills read through from the device
    assert len(assert_served_once(pieces, data)) * BLOCK == sum(map(len, pieces))


@pytest.mark.redis
def test_redis_pool_serves_each_byte_once_across_clients(random_device):
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the Redis pool test needs a Redis server")
    import redis

    path, data = random_device
    key = f"qrng-test:{uuid.uuid4()}"
    filler_client = redis.Redis.from_url(url)
    filler = EntropyPool(
        device_set(path), RedisBackend(filler_client, key), chunk_bytes=BLOCK * 157, target_bytes=2 << 20
    )
    try:
        assert filler.fill() == 2 << 20 and filler.level() == 2 << 20
        # Consumers in other "processes": their own connections and pools, no source to read through.
        consumers = [
            EntropyPool(SourceSet([]), RedisBackend(redis.Redis.from_url(url), key), read_through=False)
            for _ in range(3)
        ]
        pieces = [[] for _ in consumers]

        def consume(i):
            rng = random.Random(i)
            for _ in range(150):
                pieces[i].append(consumers[i].take(BLOCK * rng.randint(1, 62), wait=0)[0])

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        flat = [p for per in pieces for p in per]
        assert len(flat) == 450
        assert_served_once(flat, data)
        assert filler.level() == (2 << 20) - sum(map(len, flat))  # the byte counter stays exact
        assert consumers[0].source_health() == []  # no sources of its own: nothing to merge
        assert consumers[0].backend.published_health()["sources"][0]["health"] == "healthy"
    finally:
        filler.backend.clear()


def test_stream_never_holds_the_whole_response():
    sources = SourceSet([SourceEntry(HealthTestedSource(DeviceSource("urandom", "/dev/urandom")))])
    pool = EntropyPool(sources, chunk_bytes=256 << 10, target_bytes=1 << 20)
    n = 48 << 20
    tracemalloc.start()
    try:
        stream = pool.stream(n)
        sizes = []
        for chunk in stream:
            sizes.append(len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) == n == stream.bytes_served and max(sizes) <= 256 << 10
    assert peak < 8 << 20, f"peak {peak} bytes while streaming {n}"
    assert stream.provenance[0].source == "urandom" and not stream.simulated


def test_stream_reports_simulated_provenance(appliance):
    sources = SourceSet([SourceEntry(HealthTestedSource(TwinSource("twin", appliance)))])
    stream = EntropyPool(sources, chunk_bytes=4096).stream(10_000)
    assert stream.simulated and stream.provenance[0].kind == "twin"
    assert sum(len(c) for c in stream) == 10_000


def test_stream_fails_before_the_first_byte_when_no_source_is_healthy(tmp_path):
    (tmp_path / "stuck").write_bytes(b"\x00" * 10_000)
    pool = EntropyPool(device_set(tmp_path / "stuck"))
    with pytest.raises(NoHealthyEntropySource, match="no healthy entropy source"):
        pool.stream(1 << 20)


def test_empty_pool_without_read_through_is_a_clear_error(appliance):
    slow = HttpSource("slow", appliance + "/slow?bytes={bytes}", read_timeout=0.2, attempts=1)
    pool = EntropyPool(SourceSet([SourceEntry(HealthTestedSource(slow))]), read_through=False)
    assert pool.fill() == 0 and "timed out" in pool.last_error
    with pytest.raises(EntropyPoolEmpty, match=r"pool is empty .*timed out"):
        pool.take(100, wait=0.3)
    assert ApplianceHandler.calls["/slow"] == 1  # no read-through: take() did not go to the source itself
    assert pool.level() == 0


def test_alarm_flushes_the_pool(tmp_path):
    healthy = np.random.default_rng(32).bytes(300_000)
    (tmp_path / "dev").write_bytes(healthy + b"\x00" * 100 + healthy[:200_000])
    pool = None
    sources = device_set(tmp_path / "dev", on_alarm=lambda alarm: pool.handle_alarm(alarm))
    pool = EntropyPool(sources, chunk_bytes=50_000, target_bytes=1 << 20, read_through=False)
    pool.fill()  # fills until the stuck run: the alarm drops everything buffered
    assert "repetition-count" in pool.last_error
    assert pool.level() == 0
    with pytest.raises(EntropyPoolEmpty):
        pool.take(10, wait=0)


def test_filler_thread_keeps_the_pool_topped_up(random_device):
    path, data = random_device
    pool = EntropyPool(device_set(path), chunk_bytes=64 << 10, target_bytes=1 << 20, read_through=False)
    filler = PoolFiller(pool, interval=0.02).start()
    try:
        for _ in range(200):  # bounded wait for the first fill
            if pool.level() >= 1 << 20:
                break
            time.sleep(0.01)
        pieces = [pool.take(BLOCK * 5000, wait=2.0)[0] for _ in range(10)]  # 3.2 MB through a 1 MiB pool
    finally:
        filler.stop()
    assert_served_once(pieces, data)


def test_formats_draw_through_the_pool_and_count_consumption(random_device):
    path, _ = random_device
    pool = EntropyPool(device_set(path), backend=LocalBackend(), chunk_bytes=4096)
    reader = pool.reader()
    result = formats.integers(reader, 1000, 0, 2**31)  # about half the draws rejected
    assert result.consumed == reader.consumed > 4000
    assert reader.provenance[0].source == "dev"
    assert formats.anu(reader, 10, "uint16").consumed == 20


@pytest.mark.redis
def test_a_process_that_only_pops_shows_the_fillers_health(tmp_path):
    """Web processes pop from a shared pool; the capabilities they show come from the filler's reports, through
    the real Redis (each pool with its own connection, as in two processes)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the shared-pool health test needs a Redis server")
    import redis

    healthy = np.random.default_rng(33).bytes(120_000)  # the second fill reaches the stuck bytes
    (tmp_path / "dev").write_bytes(healthy + b"\x00" * 100 + healthy)
    key = f"qrng-test:{uuid.uuid4()}"
    filler = None
    filler_sources = device_set(tmp_path / "dev", on_alarm=lambda alarm: filler.handle_alarm(alarm))
    filler = EntropyPool(filler_sources, RedisBackend(redis.Redis.from_url(url), key), chunk_bytes=50_000,
                         target_bytes=100_000, read_through=False)
    web = EntropyPool(device_set(tmp_path / "dev"), RedisBackend(redis.Redis.from_url(url), key), read_through=False)
    try:
        assert web.source_health()[0]["health"] == "untested"  # nothing published yet
        filler.fill()
        assert web.source_health()[0]["health"] == "healthy" and "published_at" in web.source_health()[0]
        web.take(10_000, wait=0)
        filler.fill()  # reaches the stuck bytes: alarm, flush, publish
        view = web.source_health()[0]
        assert view["health"] == "failed" and view["last_alarm"]["test"] == "repetition-count"
    finally:
        filler.backend.clear()
        filler.backend.client.delete(key + ":health")
