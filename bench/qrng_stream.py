"""Benchmark: streaming a large request through the pool from a health-tested device vs reading it directly.

    .venv/bin/python bench/qrng_stream.py [--mib 64] [--rounds 5] [--device /dev/urandom]

/dev/urandom stands in for a PCIe QRNG's character device. "direct" reads the device in 1 MiB chunks with
DeviceSource in this thread. The pool variants stream the same amount through EntropyPool.stream(), filled by
PoolFiller threads reading the device behind the SP 800-90B start-up and continuous tests:

- pool/read-through:    no filler: the consumer reads through the health-tested source (the serial cost);
- pool/1-thread:        one filler thread reads and tests; the consumer reads through when the pool is empty;
- pool/2-threads:       two filler threads, device read and health test pipelined (hand-over-hand locks).

The timer starts with an empty pool and the filler threads, so the start-up test and the read-ahead (up to
4 MiB beyond what is served) are inside the measured time. Each variant run is paired with a direct read
just before it; the medians of rates and of per-pair ratios are reported. Goals: >= 1 Gbit/s and ratio
>= 0.8. The machine has 2 cores: the threaded variants need the second core free, so run it on an otherwise
idle machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import CHUNK, direct

from qrng.pool import EntropyPool, PoolFiller
from qrng.sources import DeviceSource, HealthTestedSource, SourceEntry, SourceSet

POOL_BYTES = 4 << 20
VARIANTS = {  # name: filler threads
    "pool/read-through": 0,
    "pool/1-thread": 1,
    "pool/2-threads": 2,
}


def through_pool(device: str, n: int, threads: int) -> float:
    tested = HealthTestedSource(DeviceSource("qrng", device, chunk_size=CHUNK))
    pool = EntropyPool(SourceSet([SourceEntry(tested)]), chunk_bytes=CHUNK, target_bytes=POOL_BYTES)
    started = time.perf_counter()
    filler = PoolFiller(pool, low_water=pool.target_bytes - CHUNK, interval=0.01, threads=threads)
    filler.start()
    try:
        served = sum(len(chunk) for chunk in pool.stream(n))
        seconds = time.perf_counter() - started
    finally:
        filler.stop()
        tested.close()
    assert served == n and tested.health == "healthy"
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="/dev/urandom")
    args = parser.parse_args()
    n = args.mib << 20
    # Each variant run is paired with a direct read just before it, and the ratio is taken per pair: the
    # machine is shared, and a pair sees the same background load.
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    directs: list[float] = []
    for _ in range(args.rounds):
        for name, threads in VARIANTS.items():
            base = direct(args.device, n)
            rate = through_pool(args.device, n, threads)
            directs.append(base)
            rates[name].append(rate)
            ratios[name].append(rate / base)
    print(
        f"{args.mib} MiB from {args.device}, {CHUNK >> 20} MiB chunks, {POOL_BYTES >> 20} MiB pool, "
        f"{args.rounds} rounds, medians (load average {os.getloadavg()[0]:.2f})"
    )
    d = statistics.median(directs)
    print(f"{'direct':22s} {d / 1e6:6,.0f} MB/s = {d * 8 / 1e9:5.2f} Gbit/s")
    for name in VARIANTS:
        rate, ratio = statistics.median(rates[name]), statistics.median(ratios[name])
        print(
            f"{name:22s} {rate / 1e6:6,.0f} MB/s = {rate * 8 / 1e9:5.2f} Gbit/s  ratio {ratio:.3f}  "
            f"[>= 1 Gbit/s: {'met' if rate * 8 / 1e9 >= 1 else 'NOT met'}; "
            f"ratio >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}]  "
            f"per-pair ratios: {[round(r, 2) for r in ratios[name]]}"
        )


if __name__ == "__main__":
    main()
