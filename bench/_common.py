"""Helpers shared by the QRNG benchmarks (``bench/qrng_api.py``, ``bench/qrng_stream.py``)."""

from __future__ import annotations

import time

from qrng.sources import DeviceSource

CHUNK = 1 << 20


def direct(device: str, n: int) -> float:
    """The baseline: bytes/s reading ``n`` bytes of the device in 1 MiB chunks with ``DeviceSource``, no tests."""
    source = DeviceSource("direct", device, chunk_size=CHUNK)
    started = time.perf_counter()
    got = 0
    while got < n:
        got += len(source.read(min(CHUNK, n - got)))
    seconds = time.perf_counter() - started
    source.close()
    return n / seconds
