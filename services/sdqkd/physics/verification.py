"""Error verification: a 64-bit universal hash of the corrected key, compared by both ends.

The hash is a random binary Toeplitz-family matrix (Hankel form: row i is the seed string shifted by i bits) times
the key over GF(2), bit-packed in 64-bit words. Two different keys collide with probability 2^-64 < eps_cor.
"""

from __future__ import annotations

import numpy as np

TAG_BITS = 64


def _words(bits: np.ndarray, n_words: int) -> np.ndarray:
    packed = np.packbits(bits.astype(np.uint8), bitorder="little")
    buf = np.zeros(n_words * 8, dtype=np.uint8)
    buf[: packed.size] = packed
    return buf.view("<u8")


def _parity64(words: np.ndarray) -> np.ndarray:
    v = words.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        v ^= v >> np.uint64(shift)
    return (v & np.uint64(1)).astype(np.uint8)


def verification_hash(bits: np.ndarray, seed: int) -> bytes:
    """64-bit tag of a 0/1 array; ``seed`` (public, sent by one end) picks the hash from the family."""
    n_words = max(1, -(-bits.size // 64))
    x = _words(bits, n_words)
    t = np.random.Generator(np.random.PCG64(seed)).integers(0, 2**64, size=n_words + 1, dtype=np.uint64)
    shifts = np.arange(TAG_BITS, dtype=np.uint64)[:, None]
    lo = t[None, :-1] >> shifts
    hi = np.where(shifts == 0, np.uint64(0), t[None, 1:] << ((np.uint64(64) - shifts) % np.uint64(64)))
    rows = (lo | hi) & x[None, :]
    tag_bits = _parity64(np.bitwise_xor.reduce(rows, axis=1))
    return np.packbits(tag_bits).tobytes()
