"""NIST SP 800-90B continuous health tests for entropy sources.

Repetition Count Test (RCT, 800-90B 4.4.1) and Adaptive Proportion Test (APT, 4.4.2) over a stream of samples,
vectorised with numpy over byte buffers. The test state (current run, current APT window) is carried across
buffer boundaries, so a run or a window that spans two reads is tested as one stream.

Cutoffs are computed exactly from the claimed min-entropy per sample H, the false-positive rate alpha and the
sample width:

- RCT: ``C = 1 + ceil(-log2(alpha) / H)``; fail when a run of identical samples reaches C.
- APT: window W = 1024 for binary samples, 512 otherwise; ``C = 1 + CRITBINOM(W, 2^-H, 1 - alpha)``, i.e.
  one plus the smallest k with ``P[Bin(W, 2^-H) > k] <= alpha``, evaluated with exact integer arithmetic
  (floating-point binomial tails, e.g. ``scipy.stats.binom.isf``, are wrong at alpha = 2^-60).

Also the 800-90B 6.3.1 most-common-value min-entropy estimate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SUPPORTED_SAMPLE_BITS = (1, 8)
STARTUP_SAMPLES = 1024  # 800-90B 4.3: start-up tests over at least 1024 consecutive samples

# Defaults for byte samples from a QRNG. H = 7 is a deliberately conservative claim for a full-entropy byte
# source: the real false-alarm rate of a healthy source is then far below alpha (see docs/qrng.md), which
# matters at Gbit/s, where alpha = 2^-40 per sample with H = 8 would still alarm every few hours.
DEFAULT_MIN_ENTROPY = 7.0
DEFAULT_ALPHA = 2.0**-40
DEFAULT_SAMPLE_BITS = 8

# Buffers are tested in blocks so that temporary arrays stay small and cache-friendly; the temporaries are
# preallocated per test (fresh megabyte arrays would cost page faults on every call).
_BLOCK_SAMPLES = 1 << 20
_EVEN_BYTES = np.uint64(0x00FF00FF00FF00FF)
_SUM_16 = np.uint64(0x0001000100010001)  # (x * _SUM_16) >> 48 adds the four 16-bit lanes of x
_SHIFT_8_64 = np.uint64(8)
_SHIFT_48 = np.uint64(48)
_NO_INDICES = np.empty(0, dtype=np.intp)
_SHIFT_8 = np.uint32(8)
_LOW_24 = np.uint32(0x00FFFFFF)


class HealthTestFailure(Exception):
    """A continuous health test failed: the source must stop serving until it is reset."""

    def __init__(self, test: str, sample_index: int, detail: str):
        super().__init__(f"{test} health test failed at sample {sample_index}: {detail}")
        self.test = test
        self.sample_index = sample_index
        self.detail = detail


def _as_fraction(x: float | Fraction) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x)  # exact value of the binary float


def _check_parameters(min_entropy: float, alpha: float | Fraction, sample_bits: int) -> None:
    if sample_bits not in SUPPORTED_SAMPLE_BITS:
        raise ValueError(f"sample_bits must be one of {SUPPORTED_SAMPLE_BITS}, got {sample_bits}")
    if not 0 < min_entropy <= sample_bits:
        raise ValueError(f"min-entropy per sample must be in (0, {sample_bits}], got {min_entropy}")
    if not 0 < alpha < 1:
        raise ValueError(f"false-positive rate alpha must be in (0, 1), got {alpha}")


def apt_window(sample_bits: int) -> int:
    """APT window size W: 1024 for binary samples, 512 for non-binary ones (800-90B 4.4.2)."""
    return 1024 if sample_bits == 1 else 512


def rct_cutoff(min_entropy: float, alpha: float | Fraction) -> int:
    """RCT cutoff ``C = 1 + ceil(-log2(alpha) / H)``.

    With alpha a power of two (the usual case) and H dyadic, the quotient is exact in floating point; a
    tolerance of 1e-9 keeps a quotient such as 30/7.5 = 4.000000000000001 from being rounded up by noise.
    """
    if not 0 < alpha < 1 or min_entropy <= 0:
        raise ValueError("need 0 < alpha < 1 and min_entropy > 0")
    a = _as_fraction(alpha)
    log2_alpha = math.log2(a.numerator) - math.log2(a.denominator)
    x = -log2_alpha / min_entropy
    nearest = round(x)
    steps = nearest if abs(x - nearest) < 1e-9 else math.ceil(x)
    return 1 + steps


def binomial_upper_tail(n: int, p: Fraction, k: int) -> Fraction:
    """Exact ``P[Bin(n, p) > k]`` as a fraction."""
    num, den = p.numerator, p.denominator
    q = den - num
    tail = sum(math.comb(n, i) * num**i * q ** (n - i) for i in range(k + 1, n + 1))
    return Fraction(tail, den**n)


@functools.lru_cache(maxsize=64)
def apt_cutoff(min_entropy: float, alpha: float | Fraction, sample_bits: int = DEFAULT_SAMPLE_BITS) -> int:
    """APT cutoff ``C = 1 + CRITBINOM(W, 2^-H, 1 - alpha)`` with exact integer arithmetic.

    p = 2^-H is taken exactly (a dyadic rational for integer H; the exact value of the double otherwise).
    All binomial terms are scaled by den(p)^W so the tail is a sum of integers compared against alpha exactly.
    """
    _check_parameters(min_entropy, alpha, sample_bits)
    window = apt_window(sample_bits)
    p = Fraction(2) ** -int(min_entropy) if float(min_entropy).is_integer() else Fraction(2.0**-min_entropy)
    a = _as_fraction(alpha)
    num, den = p.numerator, p.denominator
    q = den - num
    total = den**window
    # Walk k down from W: tail(k) = P[X > k] grows as k falls; stop at the smallest k with tail(k) <= alpha.
    tail = 0
    k = window
    term = num**window  # P[X = W] * total; then P[X = k-1] = P[X = k] * k q / ((W - k + 1) num), exactly
    while k > 0:
        if (tail + term) * a.denominator > a.numerator * total:
            break
        tail += term
        term = term * k * q // ((window - k + 1) * num)
        k -= 1
    return 1 + k


@dataclass(frozen=True)
class HealthTestConfig:
    """The operator's claim about a source: min-entropy per sample, false-positive rate, sample width."""

    min_entropy: float = DEFAULT_MIN_ENTROPY
    alpha: float = DEFAULT_ALPHA
    sample_bits: int = DEFAULT_SAMPLE_BITS

    def __post_init__(self) -> None:
        _check_parameters(self.min_entropy, self.alpha, self.sample_bits)

    @classmethod
    def from_dict(cls, config: dict | None) -> HealthTestConfig:
        config = dict(config or {})
        unknown = set(config) - {"min_entropy", "alpha", "sample_bits"}
        if unknown:
            raise ValueError(f"unknown health test settings: {sorted(unknown)}")
        return cls(**config)

    @property
    def rct_cutoff(self) -> int:
        return rct_cutoff(self.min_entropy, self.alpha)

    @property
    def apt_cutoff(self) -> int:
        return apt_cutoff(self.min_entropy, self.alpha, self.sample_bits)

    @property
    def apt_window(self) -> int:
        return apt_window(self.sample_bits)

    def describe(self) -> dict:
        """The health-test parameters, as published in the capabilities endpoint."""
        return {
            "standard": "NIST SP 800-90B 4.4",
            "min_entropy_per_sample": self.min_entropy,
            "alpha_log2": round(math.log2(self.alpha), 6),
            "sample_bits": self.sample_bits,
            "rct_cutoff": self.rct_cutoff,
            "apt_cutoff": self.apt_cutoff,
            "apt_window": self.apt_window,
            "startup_samples": STARTUP_SAMPLES,
        }


def _to_samples(data: bytes | bytearray | memoryview | np.ndarray, sample_bits: int) -> np.ndarray:
    arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if arr.dtype != np.uint8:
        raise TypeError("health tests take uint8 buffers")
    return np.unpackbits(arr) if sample_bits == 1 else arr


class HealthTest:
    """RCT + APT over one source's output stream, state carried across calls to ``feed``.

    Not thread-safe: the caller (``HealthTestedSource``) serialises access. After a failure every further
    ``feed`` raises until ``reset``.
    """

    def __init__(self, config: HealthTestConfig | None = None):
        self.config = config or HealthTestConfig()
        self.rct_c = self.config.rct_cutoff
        self.apt_c = self.config.apt_cutoff
        self.window = self.config.apt_window
        self._eq = np.empty(_BLOCK_SAMPLES, dtype=bool)
        self._pairs: np.ndarray | None = None  # only for cutoffs below 7, allocated on first use
        self._quads: np.ndarray | None = None
        self._words32 = np.empty(_BLOCK_SAMPLES // 4, dtype=np.uint32)
        self._matches = np.empty(_BLOCK_SAMPLES, dtype=bool)
        self.reset()

    def reset(self) -> None:
        self.samples_tested = 0
        self.failure: HealthTestFailure | None = None
        # RCT: the last sample seen and the length of the run it ends.
        self._last: int | None = None
        self._run = 0
        # APT: the current window's first sample, its match count and the samples seen in the window.
        self._apt_ref = 0
        self._apt_count = 0
        self._apt_seen = 0

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def feed(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Test the next samples of the stream; raise ``HealthTestFailure`` on the first failing sample."""
        if self.failure is not None:
            raise self.failure
        samples = _to_samples(data, self.config.sample_bits)
        for start in range(0, len(samples), _BLOCK_SAMPLES):
            block = samples[start : start + _BLOCK_SAMPLES]
            failures = []
            for test in (self._rct, self._apt):  # both run, so the earliest failing sample is reported
                try:
                    test(block)
                except HealthTestFailure as failure:
                    failures.append(failure)
            if failures:
                self.failure = min(failures, key=lambda f: f.sample_index)  # RCT first on a tie
                raise self.failure
            self.samples_tested += len(block)

    # -- Repetition Count Test ----------------------------------------------------------------------

    def _rct(self, x: np.ndarray) -> None:
        n = len(x)
        if n == 0:
            return
        c = self.rct_c
        base = self.samples_tested
        # The run carried in from the previous buffer, extended by this buffer's leading samples.
        head = min(n, c)
        if self._last is not None:
            extra = 0
            for sample in x[:head].tolist():  # at most c samples: plain Python beats numpy calls here
                if sample != self._last:
                    break
                extra += 1
            if self._run + extra >= c:
                self._fail_rct(base + (c - self._run) - 1, c)
        # Runs inside this buffer: c - 1 consecutive "equal to previous" flags make a run of length c.
        # Pre-filters skip the exact index search when no run of c can be inside this buffer.
        eq_idx = _NO_INDICES
        if n <= c or c < 7 or self._may_hold_aligned_run(x):
            eq = self._eq[: n - 1]
            np.equal(x[1:], x[:-1], out=eq)  # eq[i]: sample i+1 equals sample i
            if n <= c or c >= 7 or self._may_hold_run(eq, c - 1):
                eq_idx = np.flatnonzero(eq)
        if len(eq_idx) >= c - 1:
            if c == 2:
                self._fail_rct(base + int(eq_idx[0]) + 1, c)
            span = eq_idx[c - 2 :] - eq_idx[: len(eq_idx) - (c - 2)]
            hits = np.flatnonzero(span == c - 2)
            if len(hits):
                # The run also counts if it merely continues the carried-in run; the head check caught that.
                self._fail_rct(base + int(eq_idx[hits[0] + c - 2]) + 1, c)
        # Carry out the run that ends this buffer.
        tail = x[-head:].tolist()
        last = tail[-1]
        tail_run = 0
        for sample in reversed(tail):
            if sample != last:
                break
            tail_run += 1
        if tail_run == n and self._last is not None and last == self._last:
            self._run += n
        else:
            self._run = tail_run
        self._last = last

    def _may_hold_aligned_run(self, x: np.ndarray) -> bool:
        """Pre-filter for cutoffs >= 7: any 7 consecutive samples contain a 4-aligned group of 4, so a run of
        7 or more implies an aligned 32-bit word whose 4 bytes are equal. Three passes over n/4 words."""
        words = x[: len(x) - len(x) % 4].view(np.uint32)
        t = self._words32[: len(words)]
        np.right_shift(words, _SHIFT_8, out=t)
        np.bitwise_xor(t, words, out=t)
        np.bitwise_and(t, _LOW_24, out=t)  # zero exactly when the word's 4 bytes are equal
        return len(t) > 0 and t.min() == 0

    def _may_hold_run(self, eq: np.ndarray, flags: int) -> bool:
        """Cheap pre-filter: could ``eq`` hold ``flags`` consecutive True values? (False is certain.)

        Tests for min(flags, 4) consecutive flags with two AND passes; healthy byte samples almost never have
        five identical samples in a row, so the exact index search is skipped on nearly every buffer.
        """
        if flags <= 1:
            return bool(eq.any())
        if self._pairs is None or self._quads is None:
            self._pairs = np.empty(_BLOCK_SAMPLES, dtype=bool)
            self._quads = np.empty(_BLOCK_SAMPLES, dtype=bool)
        pairs = self._pairs[: len(eq) - 1]
        np.logical_and(eq[:-1], eq[1:], out=pairs)  # two flags: three identical samples
        if flags <= 3 or len(pairs) < 3:
            return bool(pairs.any())
        quads = self._quads[: len(pairs) - 2]
        np.logical_and(pairs[:-2], pairs[2:], out=quads)  # four flags: five identical samples
        return bool(quads.any())

    def _fail_rct(self, sample_index: int, c: int) -> None:
        raise HealthTestFailure("repetition-count", sample_index, f"a run of identical samples reached {c}")

    # -- Adaptive Proportion Test ------------------------------------------------------------

    def _apt(self, x: np.ndarray) -> None:
        w, c = self.window, self.apt_c
        base = self.samples_tested
        pos = 0
        n = len(x)
        # Finish the window left open by the previous buffer.
        if self._apt_seen:
            take = min(w - self._apt_seen, n)
            part = x[:take] == self._apt_ref
            if self._apt_count + int(np.count_nonzero(part)) >= c:
                needed = c - self._apt_count
                self._fail_apt(base + int(np.flatnonzero(part)[needed - 1]), c)
            self._apt_count += int(np.count_nonzero(part))
            self._apt_seen += take
            pos = take
            if self._apt_seen == w:
                self._apt_seen = 0
        # Whole windows, all at once.
        full = (n - pos) // w
        if full:
            windows = x[pos : pos + full * w].reshape(full, w)
            matches = self._matches[: full * w].reshape(full, w)
            np.equal(windows, windows[:, :1], out=matches)
            # Count matches per window on 64-bit words (W is a multiple of 8: no word straddles two windows).
            # Summing a window's words adds its 0/1 bytes lane by lane; a lane reaches at most W/8 = 128,
            # so no carry crosses lanes. Then fold the 8 byte lanes of each window's sum into one count.
            lanes = matches.view(np.uint64).reshape(full, w // 8).sum(axis=1)
            pairs = (lanes & _EVEN_BYTES) + ((lanes >> _SHIFT_8_64) & _EVEN_BYTES)  # 4 lanes of 16 bits
            counts = (pairs * _SUM_16) >> _SHIFT_48
            if counts.max() >= c:
                row = int(np.flatnonzero(counts >= c)[0])
                matches = np.flatnonzero(windows[row] == windows[row, 0])
                self._fail_apt(base + pos + row * w + int(matches[c - 1]), c)
            pos += full * w
        # Open a new window with the remaining samples.
        if pos < n:
            rest = x[pos:]
            self._apt_ref = int(rest[0])
            self._apt_count = int(np.count_nonzero(rest == self._apt_ref))
            self._apt_seen = len(rest)
            if self._apt_count >= c:
                self._fail_apt(base + pos + int(np.flatnonzero(rest == self._apt_ref)[c - 1]), c)

    def _fail_apt(self, sample_index: int, c: int) -> None:
        raise HealthTestFailure(
            "adaptive-proportion", sample_index, f"a sample value reached {c} of {self.window} in one window"
        )


def startup_bytes(config: HealthTestConfig) -> int:
    """Bytes to draw for the start-up test: at least 1024 samples, in whole APT windows."""
    samples = max(STARTUP_SAMPLES, config.apt_window)
    samples = -(-samples // config.apt_window) * config.apt_window
    return -(-samples * config.sample_bits // 8)


def most_common_value_estimate(data: bytes | np.ndarray, sample_bits: int = 8) -> dict:
    """SP 800-90B 6.3.1 most-common-value estimate of min-entropy per sample.

    ``p = cmax / L; pu = min(1, p + 2.576 * sqrt(p (1 - p) / (L - 1))); H = -log2(pu)``.
    """
    samples = _to_samples(data, sample_bits)
    return mcv_from_counts(np.bincount(samples, minlength=1 << sample_bits), sample_bits)


def mcv_from_counts(counts: np.ndarray, sample_bits: int = 8) -> dict:
    """The MCV estimate from per-value sample counts (so a long stream can be counted piece by piece)."""
    length = int(counts.sum())
    if length < 2:
        raise ValueError("the MCV estimate needs at least two samples")
    p = float(counts.max()) / length
    pu = min(1.0, p + 2.576 * math.sqrt(p * (1.0 - p) / (length - 1)))
    return {
        "samples": length,
        "sample_bits": sample_bits,
        "most_common_value": int(counts.argmax()),
        "p_hat": p,
        "p_upper": pu,
        "min_entropy_per_sample": -math.log2(pu),
        "min_entropy_per_bit": -math.log2(pu) / sample_bits,
    }
