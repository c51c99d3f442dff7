"""NIST SP 800-90B health tests: exact cutoffs, failure detection, state across buffer boundaries."""

import math
from fractions import Fraction

import numpy as np
import pytest

from qrng.health import (
    HealthTest,
    HealthTestConfig,
    HealthTestFailure,
    apt_cutoff,
    binomial_upper_tail,
    most_common_value_estimate,
    rct_cutoff,
    startup_bytes,
)

# The cutoffs of NIST SP 800-90B section 4.4 (RCT 4.4.1, APT 4.4.2), computed with exact arithmetic.
SP800_90B_CUTOFFS = [
    # (H, log2 alpha, sample_bits, RCT, APT)
    (1, -20, 8, 21, 311),  # W = 512
    (1, -20, 1, 21, 589),  # W = 1024 (binary)
    (1, -30, 8, 31, 325),
    (1, -60, 8, 61, 355),  # where scipy.stats.binom.isf is wrong
    (8, -20, 8, 4, 13),
    (8, -30, 8, 5, 16),
    (8, -40, 8, 6, 19),
]


def random_bytes(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize(("h", "log2_alpha", "bits", "rct", "apt"), SP800_90B_CUTOFFS)
def test_cutoffs_match_the_sp800_90b_values(h, log2_alpha, bits, rct, apt):
    alpha = 2.0**log2_alpha
    assert rct_cutoff(h, alpha) == rct
    assert apt_cutoff(h, alpha, bits) == apt


@pytest.mark.parametrize(("h", "log2_alpha", "bits"), [(1, -60, 8), (7, -40, 8), (8, -20, 8), (1, -20, 1)])
def test_apt_cutoff_is_the_smallest_k_with_tail_at_most_alpha(h, log2_alpha, bits):
    alpha = Fraction(2) ** log2_alpha
    window = 1024 if bits == 1 else 512
    k = apt_cutoff(h, alpha, bits) - 1
    p = Fraction(1, 2**h)
    assert binomial_upper_tail(window, p, k) <= alpha < binomial_upper_tail(window, p, k - 1)


def test_non_integer_min_entropy_uses_the_ceiling():
    assert rct_cutoff(7.5, 2.0**-30) == 1 + 4  # 30 / 7.5 = 4 exactly: no spurious rounding up
    assert rct_cutoff(7.0, 2.0**-30) == 1 + 5  # 30 / 7 = 4.29 -> 5
    assert apt_cutoff(7.5, 2.0**-30) > apt_cutoff(8, 2.0**-30)


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError):
        HealthTestConfig(min_entropy=9, sample_bits=8)
    with pytest.raises(ValueError):
        HealthTestConfig(alpha=1.5)
    with pytest.raises(ValueError):
        HealthTestConfig(sample_bits=4)
    with pytest.raises(ValueError):
        HealthTestConfig.from_dict({"entropy": 8})


def test_stuck_source_fails_the_rct_exactly_at_the_cutoff():
    config = HealthTestConfig(min_entropy=8, alpha=2.0**-30)  # RCT cutoff 5
    prefix = random_bytes(10_000)
    stuck_value = (int(prefix[-1]) + 1) % 256
    stream = np.concatenate([prefix, np.full(100, stuck_value, dtype=np.uint8)])
    test = HealthTest(config)
    with pytest.raises(HealthTestFailure) as info:
        test.feed(stream)
    assert info.value.test == "repetition-count"
    assert info.value.sample_index == len(prefix) + config.rct_cutoff - 1  # the run reached C here


def test_a_run_one_short_of_the_cutoff_passes_the_rct():
    config = HealthTestConfig(min_entropy=8, alpha=2.0**-30)  # RCT cutoff 5
    prefix = random_bytes(512 * 4)
    run_value = (int(prefix[-1]) + 1) % 256
    rest = random_bytes(512 * 4, seed=2)
    rest[0] = (run_value + 1) % 256
    stream = np.concatenate([prefix, np.full(config.rct_cutoff - 1, run_value, dtype=np.uint8), rest])
    HealthTest(config).feed(stream)  # no exception


@pytest.mark.parametrize("split", [1, 2, 3, 4, 7, 511, 513, 4096])
def test_a_run_spanning_buffer_boundaries_is_one_run(split):
    config = HealthTestConfig(min_entropy=8, alpha=2.0**-40)  # RCT cutoff 6
    prefix = random_bytes(3000)
    value = (int(prefix[-1]) + 1) % 256
    stream = np.concatenate([prefix, np.full(10, value, dtype=np.uint8)])
    test = HealthTest(config)
    with pytest.raises(HealthTestFailure) as info:
        for start in range(0, len(stream), split):
            test.feed(stream[start : start + split].tobytes())
    assert info.value.test == "repetition-count"
    assert info.value.sample_index == len(prefix) + config.rct_cutoff - 1


def biased_bytes(n: int, favourite: int, p: float, seed: int = 3) -> np.ndarray:
    """Bytes where ``favourite`` has probability p, never in long runs (so only the APT can see the bias)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, n, dtype=np.uint8)
    data[data == favourite] = favourite ^ 0x5A
    data[rng.random(n) < p] = favourite
    for i in np.flatnonzero(np.convolve(data == favourite, np.ones(3, dtype=int), "valid") == 3):
        data[i + 2] = favourite ^ 0x33  # break any run of three
    return data


def test_biased_source_is_caught_by_the_apt_not_the_rct():
    config = HealthTestConfig()  # H = 7, alpha = 2^-40: RCT 7, APT 26 of 512
    data = biased_bytes(1 << 20, favourite=0x42, p=0.12)
    test = HealthTest(config)
    with pytest.raises(HealthTestFailure) as info:
        test.feed(data)
    assert info.value.test == "adaptive-proportion"
    # The failing sample is a match, in a window whose first sample is the favourite value.
    index = info.value.sample_index
    assert data[index] == 0x42 and data[index - index % 512] == 0x42
    window = data[index - index % 512 : index + 1]
    assert np.count_nonzero(window == 0x42) == config.apt_cutoff


@pytest.mark.parametrize("split", [100, 511, 512, 777, 5000])
def test_apt_windows_spanning_buffer_boundaries_fail_at_the_same_sample(split):
    data = biased_bytes(1 << 18, favourite=0x42, p=0.12)
    whole = HealthTest()
    with pytest.raises(HealthTestFailure) as expected:
        whole.feed(data)
    pieces = HealthTest()
    with pytest.raises(HealthTestFailure) as got:
        for start in range(0, len(data), split):
            pieces.feed(data[start : start + split])
    assert (got.value.test, got.value.sample_index) == (expected.value.test, expected.value.sample_index)


def test_healthy_source_passes_with_negligible_false_positive_probability():
    config = HealthTestConfig()
    n = 16 << 20
    # Probability that uniform bytes fail at all in n samples (union bound), for the cutoffs in force.
    p_rct = n * 256.0 ** -(config.rct_cutoff - 1)
    p_apt = (n // 512) * float(binomial_upper_tail(511, Fraction(1, 256), config.apt_cutoff - 2))
    assert p_rct + p_apt < 1e-6
    test = HealthTest(config)
    data = random_bytes(n, seed=7)
    for start in range(0, n, 3 << 20):
        test.feed(data[start : start + (3 << 20)])
    assert test.samples_tested == n and not test.failed


def test_after_a_failure_the_test_stays_failed_until_reset():
    test = HealthTest(HealthTestConfig(min_entropy=8, alpha=2.0**-20))
    with pytest.raises(HealthTestFailure):
        test.feed(b"\x00" * 10)
    with pytest.raises(HealthTestFailure):
        test.feed(random_bytes(1024).tobytes())
    test.reset()
    test.feed(random_bytes(1024).tobytes())
    assert not test.failed


def test_binary_samples_use_the_binary_window_and_bit_runs():
    config = HealthTestConfig(min_entropy=1, alpha=2.0**-20, sample_bits=1)  # RCT 21, APT 589 of 1024
    test = HealthTest(config)
    test.feed(random_bytes(4096).tobytes())
    assert test.samples_tested == 4096 * 8
    with pytest.raises(HealthTestFailure) as info:
        test.feed(b"\xff" * 3)  # 24 one-bits in a row
    assert info.value.test == "repetition-count"


def test_startup_covers_at_least_1024_samples_in_whole_windows():
    assert startup_bytes(HealthTestConfig()) == 1024
    assert startup_bytes(HealthTestConfig(min_entropy=1, sample_bits=1)) == 128  # 1024 bits


def test_most_common_value_estimate():
    # L = 100, cmax = 50: p = 0.5, pu = 0.5 + 2.576 * sqrt(0.25 / 99) = 0.62945, H = 0.66787
    data = bytes([7] * 50 + list(range(100, 150)))
    estimate = most_common_value_estimate(data)
    assert estimate["most_common_value"] == 7
    assert estimate["min_entropy_per_sample"] == pytest.approx(0.667839, abs=1e-6)
    uniform = most_common_value_estimate(random_bytes(1 << 20))
    assert 7.8 < uniform["min_entropy_per_sample"] < 8.0
    assert math.isclose(uniform["min_entropy_per_bit"] * 8, uniform["min_entropy_per_sample"])


def reference_health_test(samples, config: HealthTestConfig):
    """800-90B 4.4.1 / 4.4.2 as written, one sample at a time: (test, index) of the first failure, or None."""
    rct_c, apt_c, window = config.rct_cutoff, config.apt_cutoff, config.apt_window
    last, run, ref, count, seen = None, 0, None, 0, 0
    for i, sample in enumerate(samples):
        run = run + 1 if sample == last else 1
        last = sample
        if run >= rct_c:
            return ("repetition-count", i)
        if seen == 0:
            ref, count = sample, 0
        count += sample == ref
        seen += 1
        if count >= apt_c:
            return ("adaptive-proportion", i)
        seen %= window
    return None


@pytest.mark.parametrize(
    ("h", "log2_alpha", "bits"),
    [(8, -20, 8), (8, -8, 8), (7, -40, 8), (4, -20, 8), (1, -20, 1), (0.5, -20, 1)],
)
def test_vectorised_tests_agree_with_the_textbook_loop(h, log2_alpha, bits):
    """Differential test: random streams with injected runs and biased stretches, split at random points."""
    config = HealthTestConfig(min_entropy=h, alpha=2.0**log2_alpha, sample_bits=bits)
    rng = np.random.default_rng(int(h * 100) + bits)
    outcomes = set()
    for trial in range(12):
        size = 20_000 if bits == 8 else 2_500  # the same number of samples order of magnitude
        data = rng.integers(0, 256, size, dtype=np.uint8)
        at = int(rng.integers(0, size - 1000))
        if trial % 3 == 0:  # a run of identical bytes (bits) of random length
            data[at : at + int(rng.integers(1, 12 if bits == 8 else 6))] = rng.choice([0, 255])
        elif trial % 3 == 1:  # a stretch where one value is very common
            stretch = data[at : at + 1000]
            stretch[rng.random(len(stretch)) < (0.2 if bits == 8 else 0.6)] = 7 if bits == 8 else 255
        samples = np.unpackbits(data) if bits == 1 else data
        expected = reference_health_test(samples.tolist(), config)
        test = HealthTest(config)
        got = None
        cuts = np.sort(rng.integers(0, len(data), 5))
        try:
            for piece in np.split(data, cuts):
                test.feed(piece)
        except HealthTestFailure as failure:
            got = (failure.test, failure.sample_index)
        assert got == expected, (trial, got, expected)
        outcomes.add(expected[0] if expected else None)
    if config.rct_cutoff > 2:  # (with a cutoff of 2 every random stream fails at once)
        assert len(outcomes) >= 2  # the trials exercise failures as well as passes


@pytest.mark.parametrize("offset", range(8))
def test_runs_at_every_word_alignment(offset):
    """The cutoff-7 pre-filter looks at 4-byte aligned words: a run must be caught whatever its alignment."""
    config = HealthTestConfig()  # RCT cutoff 7
    data = random_bytes(4096, seed=50 + offset)
    start = 1000 + offset
    value = (int(data[start - 1]) + 1) % 256
    short = data.copy()
    short[start : start + config.rct_cutoff - 1] = value
    short[start + config.rct_cutoff - 1] = (value + 1) % 256
    HealthTest(config).feed(short)  # a run one short of the cutoff passes
    full = data.copy()
    full[start : start + config.rct_cutoff] = value
    full[start + config.rct_cutoff] = (value + 1) % 256
    with pytest.raises(HealthTestFailure) as info:
        HealthTest(config).feed(full)
    assert info.value.sample_index == start + config.rct_cutoff - 1


def test_the_earliest_failure_is_reported_when_both_tests_fail_in_one_buffer():
    config = HealthTestConfig()  # RCT 7, APT 26 of 512
    data = random_bytes(8192, seed=60)
    window = data[1024:1536]  # the third window: its first sample appears 40 times
    window[0] = 0x42
    window[np.arange(1, 41) * 12] = 0x42
    data[5000:5010] = 0x17  # a stuck run, later in the same buffer
    expected = reference_health_test(data.tolist(), config)
    assert expected[0] == "adaptive-proportion"
    with pytest.raises(HealthTestFailure) as info:
        HealthTest(config).feed(data)
    assert (info.value.test, info.value.sample_index) == expected
