"""SP 800-22 battery against the worked examples of SP 800-22 Rev. 1a section 2; igamc vs closed forms."""

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from qrng import quality

# The first 100 bits of pi's binary expansion (11.0010010000111111...), SP 800-22's example sequence.
PI_100 = (
    "1100100100001111110110101010001000100001011010001100001000110100110001001100011001100010100010111000"
)
LONGEST_RUN_128 = (
    "11001100000101010110110001001100111000000000001001001101010100010001001111010110100000001101011111001100"
    "111001101101100010110010"
)


def bits(text: str) -> np.ndarray:
    return np.array([int(c) for c in text], dtype=np.uint8)


def pi_bits(n: int) -> str:
    """pi in binary by Machin's formula with integers (checks the hard-coded example sequence)."""

    def arctan_inv(x: int, one: int) -> int:
        total = term = one // x
        k, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * k + 1))
            sign, k = -sign, k + 1
        return total

    one = 1 << (n + 20)
    return bin(4 * (4 * arctan_inv(5, one) - arctan_inv(239, one)))[2 : n + 2]


def test_example_sequence_is_pi():
    assert pi_bits(100) == PI_100


@pytest.mark.parametrize(
    ("a", "x", "expected"),
    [
        (1.0, 2.5, math.exp(-2.5)),
        (0.5, 0.7, math.erfc(math.sqrt(0.7))),
        (0.5, 9.0, math.erfc(3.0)),
        (3.0, 1.2, math.exp(-1.2) * (1 + 1.2 + 1.2**2 / 2)),
    ],
)
def test_igamc_matches_closed_forms(a, x, expected):
    assert quality.igamc(a, x) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("x", [400.0, 512.0, 600.0])
def test_igamc_for_large_integer_a_matches_the_poisson_sum(x):
    a = 512  # Q(n, x) = P[Poisson(x) < n], summed in log space
    terms = [math.exp(-x + k * math.log(x) - math.lgamma(k + 1)) for k in range(a)]
    assert quality.igamc(a, x) == pytest.approx(math.fsum(terms), rel=1e-9, abs=1e-300)


def test_chi2_survival_function():
    assert quality.chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert quality.chi2_sf(0.0, 5) == 1.0


# SP 800-22 Rev. 1a section 2 examples: (test, input, expected p-values).
def test_frequency_example():
    assert quality.frequency(bits(PI_100))["p_values"][0] == pytest.approx(0.109599, abs=1e-6)


def test_block_frequency_example():
    assert quality.block_frequency(bits(PI_100), block=10)["p_values"][0] == pytest.approx(0.706438, abs=1e-6)


def test_runs_example():
    assert quality.runs(bits(PI_100))["p_values"][0] == pytest.approx(0.500798, abs=1e-6)


def test_longest_run_example():
    result = quality.longest_run(bits(LONGEST_RUN_128))
    assert result["block"] == 8
    assert result["statistic"] == pytest.approx(4.882605, abs=1e-6)
    assert result["p_values"][0] == pytest.approx(0.180598, abs=1e-6)


def test_dft_spectral_on_the_example_sequence():
    # Rev. 1a's printed example (N1 = 46, P = 0.168669) does not follow from its own threshold
    # T = sqrt(ln(1/0.05) n): 48 of the 50 magnitudes are below T, as independent implementations also find.
    result = quality.dft_spectral(bits(PI_100))
    assert result["p_values"][0] == pytest.approx(0.646355, abs=1e-6)
    periodic = np.tile(np.array([1, 1, 0, 1, 0, 0, 0, 1], dtype=np.uint8), 1000)
    assert quality.dft_spectral(periodic)["p_values"][0] < 0.01


def test_serial_example():
    p1, p2 = quality.serial(bits("0011011101"), m=3)["p_values"]
    assert p1 == pytest.approx(0.808792, abs=1e-6) and p2 == pytest.approx(0.670320, abs=1e-6)


def test_approximate_entropy_examples():
    assert quality.approximate_entropy(bits("0100110101"), m=3)["p_values"][0] == pytest.approx(
        0.261961, abs=1e-6
    )
    assert quality.approximate_entropy(bits(PI_100), m=2)["p_values"][0] == pytest.approx(0.235301, abs=1e-6)


def test_cumulative_sums_example():
    forward, backward = quality.cumulative_sums(bits(PI_100))["p_values"]
    assert forward == pytest.approx(0.219194, abs=1e-6) and backward == pytest.approx(0.114866, abs=1e-6)


def test_random_data_passes_and_biased_data_fails():
    good = quality.quality_report(np.random.default_rng(21).bytes, 125_000)  # one sequence: every p-value passes
    assert good["sequences"] == 1 and good["bits"] == 10**6 and good["tests_run"] == 8
    assert good["passed"], [(t["name"], t["p_values"]) for t in good["tests"]]
    assert good["most_common_value"]["min_entropy_per_sample"] > 7.5
    rng = np.random.default_rng(22)
    biased = np.packbits(rng.random(10**6) < 0.51).tobytes()  # 51 % ones
    bad = quality.quality_report(lambda n: biased[:n], len(biased))
    assert not bad["passed"]
    assert {t["name"]: t["passed"] for t in bad["tests"]}["frequency"] is False


def test_report_over_sequences_with_progress_source_and_plot():
    drawn = []

    def read(n):
        drawn.append(n)
        return np.random.default_rng(len(drawn)).bytes(n)

    fractions = []
    report = quality.quality_report(
        read, (1 << 20) + 12_345, progress=lambda f, stage: fractions.append(f), source={"simulated": True}
    )
    assert drawn == [125_000] * 8  # whole 10^6-bit sequences, drawn one at a time
    assert report["sequences"] == 8 and report["bytes"] == 1_000_000 and report["bits"] == 10**6
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 8
    assert report["source"]["simulated"] is True and report["passed"], report["tests"]
    serial = next(t for t in report["tests"] if t["name"] == "serial")
    assert len(serial["p_values"]) == 16
    assert serial["minimum_proportion"] == pytest.approx(0.99 - 3 * (0.99 * 0.01 / 16) ** 0.5)
    assert report["most_common_value"]["samples"] == 1_000_000
    assert json.loads(json.dumps(report, allow_nan=False))["sequences"] == 8  # plain JSON, no numpy types
    svg = quality.report_svg(report)
    root = ET.fromstring(svg)  # noqa: S314 - our own SVG; checks it is well-formed XML
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == sum(len(t["p_values"]) for t in report["tests"])
    with pytest.raises(ValueError):
        quality.quality_report(read, quality.MAX_REPORT_BYTES + 1)


def test_biased_source_fails_the_report_by_proportion():
    rng = np.random.default_rng(23)
    report = quality.quality_report(lambda n: np.packbits(rng.random(8 * n) < 0.505).tobytes(), 1_250_000)
    frequency = next(t for t in report["tests"] if t["name"] == "frequency")
    assert report["sequences"] == 10 and not frequency["passed"] and not report["passed"]
    assert frequency["proportion_passed"] < frequency["minimum_proportion"]


def test_minimum_proportion_and_uniformity():
    assert quality.minimum_proportion(100) == pytest.approx(0.960150, abs=1e-6)  # SP 800-22 4.2.1 example
    assert quality.uniformity_p_value([i / 100 + 0.005 for i in range(100)]) == pytest.approx(1.0)
    assert quality.uniformity_p_value([0.05] * 100) < 1e-6
