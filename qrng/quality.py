"""On-demand quality report: a NIST SP 800-22 subset, vectorised with numpy, plus the SP 800-90B MCV estimate.

The project's own implementation (PyPI ``nistrng`` needs scipy and is unmaintained since 2021): frequency
(monobit), block frequency, runs, longest run of ones in a block, DFT spectral, serial, approximate entropy
and cumulative sums (forward and reverse), following SP 800-22 Rev. 1a section 2 and checked against its
worked examples in the tests. P-values use the regularised upper incomplete gamma function ``igamc``
written here (series / continued fraction, as in the NIST reference code) and ``math.erfc``.

``quality_report`` draws N bytes through a reader, runs the battery with a progress callback (fraction done)
and returns a JSON-able report; ``report_svg`` draws the per-test p-values as a small hand-written SVG.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from qrng.health import mcv_from_counts

ALPHA = 0.01  # SP 800-22 significance level
MIN_BITS = 100
MAX_REPORT_BYTES = 16 << 20
SEQUENCE_BYTES = 125_000  # 10^6 bits, the sequence length SP 800-22 recommends
DEFAULT_REPORT_BYTES = 1_250_000  # ten sequences

Progress = Callable[[float, str], None]

# -- special functions -------------------------------------------------------------------------------------

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 100_000  # convergence needs O(sqrt(a)) terms; a <= 2^15 here


def igamc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma ``Q(a, x) = Gamma(a, x) / Gamma(a)``."""
    if a <= 0:
        raise ValueError("igamc needs a > 0")
    if x <= 0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P(a, x), then Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITERATIONS):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    # Modified Lentz continued fraction for Q(a, x).
    b = x + 1 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return min(1.0, math.exp(log_prefactor) * h)


def chi2_sf(statistic: float, dof: int) -> float:
    """Survival function of the chi-square distribution: P[X >= statistic] with ``dof`` degrees of freedom."""
    return igamc(dof / 2.0, statistic / 2.0)


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _ctrunc(a: int, b: int) -> int:
    """C integer division (truncation toward zero), as in the NIST reference code."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# -- the tests (bits: a uint8 array of 0/1) ---------------------------------------------------------------


def frequency(bits: np.ndarray) -> dict:
    n = len(bits)
    s = 2 * int(np.count_nonzero(bits)) - n
    return {"p_values": [math.erfc(abs(s) / math.sqrt(n) / math.sqrt(2.0))], "statistic": s}


def block_frequency(bits: np.ndarray, block: int = 128) -> dict:
    n_blocks = len(bits) // block
    if n_blocks < 1:
        return {"skipped": f"needs at least {block} bits"}
    proportions = bits[: n_blocks * block].reshape(n_blocks, block).sum(axis=1) / block
    chi2 = 4.0 * block * float(((proportions - 0.5) ** 2).sum())
    return {"p_values": [igamc(n_blocks / 2.0, chi2 / 2.0)], "statistic": chi2, "block": block}


def runs(bits: np.ndarray) -> dict:
    n = len(bits)
    pi = float(np.count_nonzero(bits)) / n
    if abs(pi - 0.5) >= 2.0 / math.sqrt(n):  # the frequency prerequisite fails: the runs test is not run
        return {"p_values": [0.0], "statistic": None, "note": "frequency prerequisite failed"}
    v = 1 + int(np.count_nonzero(bits[1:] != bits[:-1]))
    p = math.erfc(abs(v - 2 * n * pi * (1 - pi)) / (2 * math.sqrt(2 * n) * pi * (1 - pi)))
    return {"p_values": [p], "statistic": v}


# (block size, classes' lower edges, class probabilities) from SP 800-22 section 2.4.
_LONGEST_RUN = [
    (750_000, 10_000, [10, 11, 12, 13, 14, 15, 16], [0.0882, 0.2092, 0.2483, 0.1933, 0.1208, 0.0675, 0.0727]),
    (6272, 128, [4, 5, 6, 7, 8, 9], [0.1174, 0.2430, 0.2493, 0.1752, 0.1027, 0.1124]),
    (128, 8, [1, 2, 3, 4], [0.2148, 0.3672, 0.2305, 0.1875]),
]


def _longest_runs_of_ones(blocks: np.ndarray) -> np.ndarray:
    """Longest run of ones per row, vectorised: pad rows with a zero and measure the gaps between zeros."""
    rows, width = blocks.shape
    padded = np.zeros((rows, width + 1), dtype=np.uint8)
    padded[:, :width] = blocks
    zeros = np.flatnonzero(padded.ravel() == 0)
    lengths = np.diff(np.concatenate([[-1], zeros])) - 1  # the run of ones ending at each zero
    row_of = zeros // (width + 1)
    starts = np.searchsorted(row_of, np.arange(rows))  # every row has its pad zero, so no row is empty
    return np.maximum.reduceat(lengths, starts)


def longest_run(bits: np.ndarray) -> dict:
    n = len(bits)
    table = next((row for row in _LONGEST_RUN if n >= row[0]), None)
    if table is None:
        return {"skipped": "needs at least 128 bits"}
    _, block, edges, probabilities = table
    n_blocks = n // block
    longest = _longest_runs_of_ones(bits[: n_blocks * block].reshape(n_blocks, block))
    classes = np.clip(longest, edges[0], edges[-1]) - edges[0]
    counts = np.bincount(classes, minlength=len(edges))
    expected = n_blocks * np.array(probabilities)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return {"p_values": [igamc((len(edges) - 1) / 2.0, chi2 / 2.0)], "statistic": chi2, "block": block}


def dft_spectral(bits: np.ndarray) -> dict:
    n = len(bits)
    x = 2.0 * bits.astype(np.float64) - 1.0
    magnitudes = np.abs(np.fft.rfft(x)[: n // 2])
    threshold = math.sqrt(math.log(1 / 0.05) * n)
    n0 = 0.95 * n / 2.0
    n1 = int(np.count_nonzero(magnitudes < threshold))
    d = (n1 - n0) / math.sqrt(n * 0.95 * 0.05 / 4.0)
    return {"p_values": [math.erfc(abs(d) / math.sqrt(2.0))], "statistic": d}


def _circular_pattern_counts(bits: np.ndarray, m: int) -> np.ndarray:
    """Counts of every m-bit pattern over the n overlapping windows, wrapping around the end."""
    n = len(bits)
    extended = np.concatenate([bits, bits[: m - 1]]).astype(np.uint32)
    values = np.zeros(n, dtype=np.uint32)
    for j in range(m):
        values = (values << np.uint32(1)) | extended[j : j + n]
    return np.bincount(values, minlength=1 << m)


def _fold(counts: np.ndarray) -> np.ndarray:
    """(m-1)-bit pattern counts from m-bit ones: drop each pattern's last bit."""
    return counts.reshape(-1, 2).sum(axis=1)


def serial(bits: np.ndarray, m: int | None = None) -> dict:
    n = len(bits)
    m = m or max(2, min(16, int(math.log2(n)) - 3))
    counts = _circular_pattern_counts(bits, m)
    psi = []
    for k in (m, m - 1, m - 2):
        psi.append(0.0 if k == 0 else (2.0**k / n) * float((counts.astype(np.float64) ** 2).sum()) - n)
        counts = _fold(counts) if k > 1 else counts
    del1 = psi[0] - psi[1]
    del2 = psi[0] - 2 * psi[1] + psi[2]
    return {"p_values": [igamc(2.0 ** (m - 2), del1 / 2.0), igamc(2.0 ** (m - 3), del2 / 2.0)], "m": m}


def approximate_entropy(bits: np.ndarray, m: int | None = None) -> dict:
    n = len(bits)
    m = m or max(2, min(10, int(math.log2(n)) - 6))
    counts_m1 = _circular_pattern_counts(bits, m + 1)
    phis = []
    for counts in (_fold(counts_m1), counts_m1):
        c = counts[counts > 0] / n
        phis.append(float((c * np.log(c)).sum()))
    apen = phis[0] - phis[1]
    chi2 = 2.0 * n * (math.log(2) - apen)
    return {"p_values": [igamc(2.0 ** (m - 1), chi2 / 2.0)], "statistic": chi2, "m": m}


def _cusum_p(n: int, z: int) -> float:
    root = math.sqrt(n)
    total1 = sum(
        _phi((4 * k + 1) * z / root) - _phi((4 * k - 1) * z / root)
        for k in range(_ctrunc(_ctrunc(-n, z) + 1, 4), _ctrunc(_ctrunc(n, z) - 1, 4) + 1)
    )
    total2 = sum(
        _phi((4 * k + 3) * z / root) - _phi((4 * k + 1) * z / root)
        for k in range(_ctrunc(_ctrunc(-n, z) - 3, 4), _ctrunc(_ctrunc(n, z) - 1, 4) + 1)
    )
    return 1.0 - total1 + total2


def cumulative_sums(bits: np.ndarray) -> dict:
    n = len(bits)
    steps = 2 * bits.astype(np.int64) - 1
    forward = int(np.abs(np.cumsum(steps)).max())
    backward = int(np.abs(np.cumsum(steps[::-1])).max())
    return {"p_values": [_cusum_p(n, forward), _cusum_p(n, backward)], "statistic": [forward, backward]}


BATTERY: list[tuple[str, Callable[[np.ndarray], dict]]] = [
    ("frequency", frequency),
    ("block_frequency", block_frequency),
    ("runs", runs),
    ("longest_run", longest_run),
    ("dft_spectral", dft_spectral),
    ("serial", serial),
    ("approximate_entropy", approximate_entropy),
    ("cumulative_sums", cumulative_sums),
]


def minimum_proportion(sequences: int, alpha: float = ALPHA) -> float:
    """SP 800-22 4.2.1: the lowest acceptable proportion of passing sequences, ``p - 3 sqrt(p(1-p)/m)``."""
    p = 1.0 - alpha
    return p - 3.0 * math.sqrt(p * alpha / sequences)


def uniformity_p_value(p_values: list[float]) -> float:
    """SP 800-22 4.2.2: chi-square of the p-values over ten equal bins (meaningful from 55 values on)."""
    counts = np.bincount(np.minimum((np.asarray(p_values) * 10).astype(int), 9), minlength=10)
    expected = len(p_values) / 10.0
    return igamc(4.5, float(((counts - expected) ** 2 / expected).sum()) / 2.0)


def quality_report(
    read: Callable[[int], bytes],
    n_bytes: int = DEFAULT_REPORT_BYTES,
    progress: Progress | None = None,
    source: dict | None = None,
    sequence_bytes: int = SEQUENCE_BYTES,
    alpha: float = ALPHA,
) -> dict:
    """Draw ``n_bytes`` through ``read`` and run the battery on each sequence of ``sequence_bytes``.

    As the NIST suite does: N bytes are split into m sequences of 10^6 bits (the remainder is not drawn); each
    test passes when the proportion of passing p-values is at least ``minimum_proportion(m)`` and, from 55
    sequences on, the p-values are uniform (P >= 0.0001). One sequence (N below 10^6 bits): every p-value must
    pass. Sequences are drawn and tested one at a time (memory stays small); ``progress(fraction, stage)``.
    """
    if not MIN_BITS // 8 + 1 <= n_bytes <= MAX_REPORT_BYTES:
        raise ValueError(f"a report draws between {MIN_BITS // 8 + 1} and {MAX_REPORT_BYTES} bytes")
    size = min(n_bytes, sequence_bytes)
    sequences = n_bytes // size
    byte_counts = np.zeros(256, dtype=np.int64)
    per_test: dict[str, list[dict]] = {name: [] for name, _ in BATTERY}
    started = time.perf_counter()
    for i in range(sequences):
        data = read(size)
        byte_counts += np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        for name, test in BATTERY:
            per_test[name].append(test(bits))
        if progress:
            progress((i + 1) / sequences, f"sequence {i + 1} of {sequences}")
    tests = []
    for name, results in per_test.items():
        p_values = [p for r in results for p in r.get("p_values", [])]
        if not p_values:
            tests.append({"name": name, "skipped": results[0].get("skipped", "not applicable")})
            continue
        passing = sum(p >= alpha for p in p_values) / len(p_values)
        entry: dict[str, Any] = {"name": name, "p_values": p_values, "proportion_passed": passing}
        if sequences == 1:
            entry["passed"] = passing == 1.0
            entry.update({k: v for k, v in results[0].items() if k not in ("p_values",)})
        else:
            entry["minimum_proportion"] = minimum_proportion(len(p_values), alpha)
            entry["uniformity_p_value"] = uniformity_p_value(p_values)
            uniform = len(p_values) < 55 or entry["uniformity_p_value"] >= 0.0001
            entry["passed"] = passing >= entry["minimum_proportion"] and uniform
        tests.append(entry)
    run = [t for t in tests if "passed" in t]
    return {
        "standard": "NIST SP 800-22 Rev. 1a (subset) and SP 800-90B 6.3.1",
        "bytes": sequences * size,
        "sequences": sequences,
        "bits": size * 8,  # per sequence
        "alpha": alpha,
        "tests": tests,
        "tests_passed": sum(t["passed"] for t in run),
        "tests_run": len(run),
        "passed": all(t["passed"] for t in run),
        "most_common_value": mcv_from_counts(byte_counts, 8),
        "source": source,
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.time(),
    }


# -- the plot ----------------------------------------------------------------------------------------------


def report_svg(report: dict, width: int = 640, height: int = 320) -> str:
    """The per-test p-values as an SVG dot plot, with the alpha line (no plotting library needed)."""
    left, right, top, bottom = 48, 84, 28, 96  # room for the rotated test names
    plot_w, plot_h = width - left - right, height - top - bottom
    tests = [t for t in report["tests"] if "p_values" in t]
    step = plot_w / max(1, len(tests))
    alpha = report.get("alpha", ALPHA)

    def y(p: float) -> float:
        return top + plot_h * (1.0 - p)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f"<title>SP 800-22 p-values ({report.get('sequences', 1)} x {report['bits']} bits)</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>',
        f'<text x="{left}" y="{top - 10}" font-size="13">P-values per test '
        f"({report['tests_passed']}/{report['tests_run']} passed at alpha = {alpha})</text>",
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{y(alpha):.1f}" y2="{y(alpha):.1f}" stroke="#c00" '
        f'stroke-dasharray="4 3"/><text x="{left + plot_w - 4}" y="{y(alpha) - 4:.1f}" text-anchor="end" '
        f'fill="#c00">alpha</text>'
    )
    for i, test in enumerate(tests):
        cx = left + step * (i + 0.5)
        many = len(test["p_values"]) > 4
        colour_ok = "#1a7f37" if test["passed"] else "#b35c00"  # a failed test shows all its dots in orange
        for j, p in enumerate(test["p_values"]):
            colour = colour_ok if p >= alpha else "#c00"
            jitter = (j % 7 - 3) * step / 20 if many else 0  # spread many dots sideways
            parts.append(
                f'<circle cx="{cx + jitter:.1f}" cy="{y(p):.1f}" r="{2.5 if many else 5}" fill="{colour}">'
                f"<title>"
                f"{html.escape(test['name'])}: p = {p:.6f}</title></circle>"
            )
        parts.append(
            f'<text transform="translate({cx:.1f},{top + plot_h + 10}) rotate(40)">'
            f"{html.escape(test['name'])}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)
