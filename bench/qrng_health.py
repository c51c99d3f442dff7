"""Benchmark: SP 800-90B continuous health tests (RCT + APT) alone, vectorised vs a naive per-sample loop.

    .venv/bin/python bench/qrng_health.py [--mib 128] [--naive-mib 2]

Prints bytes/s and Gbit/s for qrng.health.HealthTest over random bytes fed in 4 MiB buffers, the same for a
plain Python loop (the textbook algorithm, one sample at a time) on a smaller input in the same run, and the
ratio. Goal: >= 2 Gbit/s for the vectorised tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qrng.health import HealthTest, HealthTestConfig, HealthTestFailure

GOAL_GBITS = 2.0


def naive_health_test(data: bytes, config: HealthTestConfig) -> int | None:
    """800-90B 4.4.1 / 4.4.2 as written, one byte sample at a time; the failing sample's index or None."""
    rct_c, apt_c, window = config.rct_cutoff, config.apt_cutoff, config.apt_window
    last, run = -1, 0
    ref, count, seen = 0, 0, 0
    for i, sample in enumerate(data):
        run = run + 1 if sample == last else 1
        last = sample
        if run >= rct_c:
            return i
        if seen == 0:
            ref, count = sample, 1
        elif sample == ref:
            count += 1
        seen += 1
        if count >= apt_c:
            return i
        if seen == window:
            seen = 0
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="input for the vectorised tests (MiB)")
    parser.add_argument("--naive-mib", type=float, default=2, help="input for the naive loop (MiB)")
    parser.add_argument("--buffer-mib", type=int, default=4, help="bytes per feed() call (MiB)")
    args = parser.parse_args()

    config = HealthTestConfig()
    print(f"health tests: {config.describe()}")
    data = np.random.default_rng(1).bytes(args.mib << 20)
    buffer = args.buffer_mib << 20

    # Correctness first: both implementations flag the same sample of a stuck stream.
    probe = np.random.default_rng(2).bytes(100_000)
    probe = probe[:50_000] + bytes([(probe[49_999] + 1) % 256]) * 20 + probe[50_000:]
    test = HealthTest(config)
    try:
        test.feed(probe)
        vector_index = None
    except HealthTestFailure as failure:
        vector_index = failure.sample_index
    assert vector_index == naive_health_test(probe, config) == 50_000 + config.rct_cutoff - 1

    test = HealthTest(config)
    started = time.perf_counter()
    for start in range(0, len(data), buffer):
        test.feed(data[start : start + buffer])
    vector_seconds = time.perf_counter() - started
    vector_rate = len(data) / vector_seconds

    naive_data = data[: int(args.naive_mib * (1 << 20))]
    started = time.perf_counter()
    assert naive_health_test(naive_data, config) is None
    naive_seconds = time.perf_counter() - started
    naive_rate = len(naive_data) / naive_seconds

    print(
        f"vectorised: {len(data) >> 20} MiB in {vector_seconds:.3f} s = {vector_rate / 1e6:,.0f} MB/s "
        f"= {vector_rate * 8 / 1e9:.2f} Gbit/s"
    )
    print(
        f"naive loop: {len(naive_data) / (1 << 20):.1f} MiB in {naive_seconds:.3f} s = "
        f"{naive_rate / 1e6:,.2f} MB/s = {naive_rate * 8 / 1e9:.4f} Gbit/s"
    )
    print(f"ratio vectorised / naive: {vector_rate / naive_rate:,.0f}x")
    verdict = "met" if vector_rate * 8 / 1e9 >= GOAL_GBITS else "NOT met"
    print(f"goal >= {GOAL_GBITS} Gbit/s: {verdict}")


if __name__ == "__main__":
    main()
