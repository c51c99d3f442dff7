"""Privacy amplification by Toeplitz hashing, computed as an FFT convolution with an exact integer result.

y = T x (mod 2) with T[i, j] = t[i - j + n - 1], defined by n + l - 1 random bits t. The convolution of t with x
over the integers is computed with numpy.fft in float64 and rounded; the input is cut into chunks so the largest
sum (<= chunk length) and the transform length stay far inside float64's exact-integer range, and the rounding
residual is checked on every call.
"""

from __future__ import annotations

import numpy as np

CHUNK_BITS = 1 << 21


def next_fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is fastest on these)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def toeplitz_seed_bits(seed: int, count: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.unpackbits(np.frombuffer(rng.bytes(-(-count // 8)), dtype=np.uint8))[:count]


def toeplitz_hash(bits: np.ndarray, out_len: int, seed: int, chunk_bits: int = CHUNK_BITS) -> np.ndarray:
    """Compress the 0/1 array ``bits`` (n) to ``out_len`` bits with the Toeplitz matrix picked by ``seed``."""
    n = bits.size
    if out_len <= 0 or n == 0:
        return np.zeros(0, dtype=np.uint8)
    if out_len > n:
        raise ValueError("privacy amplification cannot lengthen the key")
    t = toeplitz_seed_bits(seed, n + out_len - 1).astype(np.float64)
    acc = np.zeros(out_len, dtype=np.int64)
    for j0 in range(0, n, chunk_bits):
        x = bits[j0 : j0 + chunk_bits].astype(np.float64)
        c = x.size
        base = n - j0 - c
        t_seg = t[base : base + c + out_len - 1]
        size = next_fast_length(c + out_len - 1)
        conv = np.fft.irfft(np.fft.rfft(t_seg, size) * np.fft.rfft(x, size), size)[c - 1 : c - 1 + out_len]
        rounded = np.rint(conv)
        if np.max(np.abs(conv - rounded)) > 0.25:
            raise ArithmeticError("FFT rounding error too large for an exact Toeplitz product")
        acc += rounded.astype(np.int64)
    return (acc & 1).astype(np.uint8)


def toeplitz_hash_reference(bits: np.ndarray, out_len: int, seed: int) -> np.ndarray:
    """Direct O(n l) product, for tests and the pure-Python baseline (small inputs only)."""
    n = bits.size
    t = toeplitz_seed_bits(seed, n + out_len - 1)
    out = []
    for i in range(out_len):
        s = 0
        for j in range(n):
            s ^= int(t[i - j + n - 1]) & int(bits[j])
        out.append(s)
    return np.array(out, dtype=np.uint8)
