"""Post-processing stages on their own: channel codec, Cascade, verification hash, Toeplitz PA."""

import math
import threading

import numpy as np
import pytest

from services.sdqkd.physics.analytical import h2
from services.sdqkd.physics.cascade import cascade_correct, serve_cascade
from services.sdqkd.physics.channel import ChannelClosed, InProcessChannel, decode_message, encode_message
from services.sdqkd.physics.privacy import next_fast_length, toeplitz_hash, toeplitz_hash_reference
from services.sdqkd.physics.verification import verification_hash


def test_messages_round_trip_arrays_bytes_and_scalars():
    msg = {"t": "x", "n": 3, "f": 0.5, "arr": np.arange(5, dtype=np.uint32), "raw": b"\x00\x01",
           "m": np.ones((2, 3)), "lst": [1, 2]}
    back = decode_message(encode_message(msg))
    assert back["t"] == "x" and back["n"] == 3 and back["f"] == 0.5 and back["lst"] == [1, 2]
    assert back["raw"] == b"\x00\x01"
    np.testing.assert_array_equal(back["arr"], msg["arr"])
    assert back["arr"].dtype == np.uint32
    np.testing.assert_array_equal(back["m"], msg["m"])


def test_in_process_channel_counts_bytes_and_times_out():
    a, b = InProcessChannel.pair()
    a.send({"t": "hello", "bits": np.zeros(100, dtype=np.uint8)})
    assert b.recv()["t"] == "hello"
    assert a.bytes_sent == b.bytes_received > 100
    assert a.messages_sent == b.messages_received == 1
    with pytest.raises(ChannelClosed):
        b.recv(timeout=0.01)


def run_cascade(n, qber, seed):
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = rng.random(n) < qber
    bob = alice ^ errors.astype(np.uint8)
    a_ch, b_ch = InProcessChannel.pair(default_timeout=30)
    served = {}
    thread = threading.Thread(target=lambda: served.setdefault("stats", serve_cascade(alice, a_ch)))
    thread.start()
    corrected, stats = cascade_correct(bob, b_ch, qber, rng)
    thread.join(30)
    return alice, bob, corrected, stats, served["stats"], int(errors.sum())


@pytest.mark.parametrize(("n", "qber"), [(20_000, 0.005), (100_000, 0.01), (100_000, 0.03), (50_000, 0.08)])
def test_cascade_corrects_every_error_and_counts_leakage(n, qber):
    for seed in range(3):
        alice, _bob, corrected, stats, oracle_stats, n_errors = run_cascade(n, qber, seed)
        assert np.array_equal(corrected, alice)
        assert stats.errors_corrected == n_errors
        # Both ends count the same revealed parities; that can never beat the Shannon limit n*H2(QBER).
        assert stats.leaked_bits == oracle_stats.leaked_bits
        assert stats.leaked_bits >= n * h2(n_errors / n)
        assert 1.0 < stats.efficiency(n) < 1.35


def test_cascade_on_identical_keys_leaks_only_block_parities():
    alice, _bob, corrected, stats, _, n_errors = run_cascade(10_000, 0.0, 1)
    assert n_errors == 0 and stats.errors_corrected == 0
    assert np.array_equal(corrected, alice)
    assert stats.leaked_bits < 10_000 // 4


def test_verification_hash_tells_keys_apart():
    rng = np.random.default_rng(5)
    key = rng.integers(0, 2, 100_003, dtype=np.uint8)
    tag = verification_hash(key, 42)
    assert len(tag) == 8
    assert verification_hash(key.copy(), 42) == tag
    for pos in (0, 63, 64, 50_000, 100_002):
        other = key.copy()
        other[pos] ^= 1
        assert verification_hash(other, 42) != tag
    assert verification_hash(key, 43) != tag


def test_verification_hash_is_linear_over_gf2():
    # h(x) xor h(y) = h(x xor y): it is a GF(2) matrix product, so collision probability is 2^-64 per seed.
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 2, (2, 5000), dtype=np.uint8)
    hx, hy, hxy = (np.frombuffer(verification_hash(v, 9), dtype=np.uint8) for v in (x, y, x ^ y))
    np.testing.assert_array_equal(hx ^ hy, hxy)


@pytest.mark.parametrize(("n", "out_len", "chunk"), [(300, 100, 1 << 21), (257, 256, 64), (1000, 17, 100)])
def test_fft_toeplitz_matches_direct_product(n, out_len, chunk):
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(bits, out_len, 11, chunk_bits=chunk),
                                  toeplitz_hash_reference(bits, out_len, 11))


def test_fft_toeplitz_large_input_is_exact_and_chunking_invariant():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2, 400_000, dtype=np.uint8)
    whole = toeplitz_hash(bits, 150_000, 8)
    chunked = toeplitz_hash(bits, 150_000, 8, chunk_bits=65_536)
    np.testing.assert_array_equal(whole, chunked)
    assert 0.48 < whole.mean() < 0.52
    with pytest.raises(ValueError):
        toeplitz_hash(bits[:10], 11, 1)


def test_next_fast_length():
    for n in (1, 7, 1000, 123_457, 1 << 20):
        m = next_fast_length(n)
        assert m >= n and m < 1.25 * n + 8
        while m % 2 == 0:
            m //= 2
        while m % 3 == 0:
            m //= 3
        while m % 5 == 0:
            m //= 5
        assert m == 1
    assert math.log2(next_fast_length(1 << 20)) == 20
