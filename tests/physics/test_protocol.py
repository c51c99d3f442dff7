"""The protocol pipeline against the analytical models, under attack, and in statistical mode.

Tolerances are statistical: 4 standard deviations of the binomial / Poisson / Gaussian estimators involved, or
of the key length's spread over statistical-mode blocks sampled from the same model (same seeds every run).
"""

import math

import numpy as np
import pytest

from services.sdqkd.physics.analytical import LinkParams, cv_gg02_key, performance
from services.sdqkd.physics.attacks import AttackConfig
from services.sdqkd.physics.pipeline import (
    LinkBlockProducer,
    PipelineConfig,
    block_size_for,
    run_block,
    run_statistical_block,
)
from services.sdqkd.physics.quantum_cv import expected_sign_error
from services.sdqkd.physics.quantum_dv import SIGNAL, expected_class_model
from services.sdqkd.physics.quantum_e91 import expected_e91

Z = 4.0  # standard deviations


def assert_within(value, expected, sigma, what):
    assert abs(value - expected) <= Z * sigma, f"{what}: {value} vs {expected} +- {Z}*{sigma}"


def assert_keys_ok(result):
    assert not result.aborted, result.telemetry.get("abort_reason")
    assert result.alice_key == result.bob_key
    assert len(result.alice_key) * 8 == result.telemetry["final_bits"] > 0


# ------------------------------------------------------------------------------------------ decoy-state BB84
DV_SETTINGS = [4.0, 10.0, 16.0]  # dB


@pytest.mark.parametrize("loss_db", DV_SETTINGS)
def test_bb84_decoy_matches_the_model(loss_db):
    params = LinkParams.from_mapping({"total_loss_db": loss_db})
    size = block_size_for(params, 150_000)
    result = run_block(params, block_size=size, seed=int(loss_db))
    assert_keys_ok(result)
    tel = result.telemetry
    model = expected_class_model(params, AttackConfig())
    # QBER of the sampled signal bits vs the analytical E_mu (binomial).
    e_mu = performance(params).qber
    k = tel["pe_sample_bits"]
    assert_within(tel["qber"], e_mu, math.sqrt(e_mu * (1 - e_mu) / k), "QBER")
    assert model["qber"][SIGNAL] == pytest.approx(e_mu, rel=1e-3)
    # Signal gain vs Q_mu (Poisson counts).
    q_mu = performance(params).details["Q_mu"]
    n_signal_pulses = size * (1 - params.decoy_probability - params.vacuum_probability)
    assert_within(tel["decoy"]["q_mu"], q_mu, math.sqrt(q_mu / n_signal_pulses), "Q_mu")
    # The decoy bounds bracket the true single-photon yield and error rate.
    eta = params.detector_efficiency * params.channel_transmittance
    assert tel["decoy"]["y1_lower"] <= params.dark_count_probability + eta
    assert tel["decoy"]["y1_lower"] > 0.7 * eta
    assert tel["decoy"]["e1_upper"] >= params.misalignment_error
    # Key length vs the statistical mode (same model, same accounting, Cascade's measured f): 4 sigma of its
    # spread over 16 sampled blocks.
    f = tel["reconciliation_efficiency"]
    lengths = [run_statistical_block(params, block_size=size, seed=s, ec_efficiency=f).telemetry["pa_output_bits"]
               for s in range(16)]
    assert_within(tel["pa_output_bits"], np.mean(lengths), np.std(lengths, ddof=1), "secret length")
    # ... and the per-pulse rate stays below the asymptotic infinite-decoy bound, within the finite-size gap.
    asymptotic = performance(params).secret_key_rate_bps
    assert 0.35 * asymptotic < tel["secret_key_rate_bps"] < asymptotic
    assert 1.0 < f < 1.35


def test_intercept_resend_always_aborts_at_full_attack():
    params = LinkParams.from_mapping({"total_loss_db": 10.0})
    size = block_size_for(params, 30_000)
    for seed in range(5):
        result = run_block(params, AttackConfig(intercept_resend_fraction=1.0), block_size=size, seed=seed)
        assert result.aborted and result.alice_key == result.bob_key == b""
        assert result.telemetry["final_bits"] == 0
        assert "QBER" in result.telemetry["abort_reason"]
        assert result.telemetry["qber"] == pytest.approx(0.25 + 0.5 * 0.01, abs=0.03)


def test_partial_intercept_resend_raises_qber_by_a_quarter_of_the_fraction():
    params = LinkParams.from_mapping({"total_loss_db": 10.0})
    attack = AttackConfig(intercept_resend_fraction=0.2)
    result = run_block(params, attack, block_size=block_size_for(params, 100_000), seed=3)
    expected = expected_class_model(params, attack)["qber"][SIGNAL]
    assert expected == pytest.approx(0.8 * 0.01 + 0.2 * (0.25 + 0.005), rel=0.02)
    k = result.telemetry["pe_sample_bits"]
    assert_within(result.telemetry["qber"], expected, math.sqrt(expected * (1 - expected) / k), "QBER")
    clean = run_block(params, block_size=block_size_for(params, 100_000), seed=3)
    assert result.telemetry["final_bits"] < 0.5 * clean.telemetry["final_bits"]


def test_photon_number_splitting_is_caught_by_the_decoys():
    params = LinkParams.from_mapping({"total_loss_db": 10.0})
    size = block_size_for(params, 150_000)
    clean = run_block(params, block_size=size, seed=7)
    attacked = run_block(params, AttackConfig(photon_number_splitting_fraction=1.0), block_size=size, seed=7)
    # The signal gain and QBER look normal (what a non-decoy system checks)...
    q_clean, q_att = clean.telemetry["decoy"]["q_mu"], attacked.telemetry["decoy"]["q_mu"]
    assert_within(q_att, q_clean, math.sqrt(2 * q_clean / (0.85 * size)), "signal gain under PNS")
    assert attacked.telemetry["qber"] < 0.02
    # ...but the weak decoy's gain collapses, so the single-photon bound and the key go to zero.
    assert attacked.telemetry["decoy"]["q_nu"] < 0.5 * clean.telemetry["decoy"]["q_nu"]
    assert attacked.aborted and attacked.telemetry["final_bits"] == 0


def test_dark_count_increase_shows_in_vacuum_yield_and_qber():
    params = LinkParams.from_mapping({"total_loss_db": 10.0})
    size = block_size_for(params, 100_000)
    result = run_block(params, AttackConfig(extra_dark_count_probability=2e-4), block_size=size, seed=11)
    y0 = result.telemetry["decoy"]["y0"]
    vacuum_pulses = size * params.vacuum_probability
    assert_within(y0, 2e-4 + 1e-6, math.sqrt(2e-4 / vacuum_pulses), "vacuum yield")
    expected = expected_class_model(params, AttackConfig(extra_dark_count_probability=2e-4))["qber"][SIGNAL]
    assert expected > 0.015
    k = result.telemetry["pe_sample_bits"]
    assert_within(result.telemetry["qber"], expected, math.sqrt(expected * (1 - expected) / k), "QBER")


# ------------------------------------------------------------------------------------------------------ E91
E91_SETTINGS = [(5.0, 0.98), (15.0, 0.95), (25.0, 0.99)]  # km, visibility


def chsh_sigma(visibility, chsh_bits):
    # Each of the 4 correlators is estimated from ~chsh_bits/4 pairs with variance (1 - E^2)/n, E = V/sqrt(2).
    e2 = visibility**2 / 2
    return math.sqrt(4 * (1 - e2) / (chsh_bits / 4))


@pytest.mark.parametrize(("length_km", "visibility"), E91_SETTINGS)
def test_e91_matches_the_model(length_km, visibility):
    params = LinkParams.for_technology("e91", length_km=length_km, visibility=visibility)
    size = block_size_for(params, 100_000)
    result = run_block(params, block_size=size, seed=int(length_km))
    assert_keys_ok(result)
    tel = result.telemetry
    perf = performance(params)
    assert_within(tel["chsh_s"], perf.details["chsh_s"], chsh_sigma(visibility, tel["chsh_bits"]), "CHSH S")
    assert_within(tel["qber"], perf.qber, math.sqrt(perf.qber * (1 - perf.qber) / tel["pe_sample_bits"]), "QBER")
    # Sifted (key-basis) coincidences: 2/9 of the detected pairs (binomial).
    p_sift = perf.details["coincidence_probability"] * 2 / 9
    assert_within(tel["sifted_bits"], size * p_sift, math.sqrt(size * p_sift), "sifted bits")
    f = tel["reconciliation_efficiency"]
    lengths = [run_statistical_block(params, block_size=size, seed=s, ec_efficiency=f).telemetry["pa_output_bits"]
               for s in range(16)]
    assert_within(tel["pa_output_bits"], np.mean(lengths), np.std(lengths, ddof=1), "secret length")
    assert tel["secret_key_rate_bps"] < perf.secret_key_rate_bps


def test_e91_intercept_resend_breaks_bell_violation():
    params = LinkParams.for_technology("e91", length_km=5.0, visibility=0.98)
    size = block_size_for(params, 50_000)
    clean = run_block(params, block_size=size, seed=1)
    assert clean.telemetry["chsh_s"] == pytest.approx(2 * math.sqrt(2) * 0.98, abs=0.05)
    for seed in range(3):
        attacked = run_block(params, AttackConfig(intercept_resend_fraction=1.0), block_size=size, seed=seed)
        s_expected = expected_e91(params, AttackConfig(intercept_resend_fraction=1.0))["chsh_s"]
        assert s_expected == pytest.approx(math.sqrt(2) * 0.98)
        assert attacked.telemetry["chsh_s"] <= 2.0
        assert attacked.aborted and attacked.alice_key == b""
        assert attacked.telemetry["qber"] == pytest.approx(0.25 * 0.98 + 0.01, abs=0.03)


# --------------------------------------------------------------------------------------------------- CV-QKD
CV_SETTINGS = [5.0, 15.0, 25.0]  # km
CV_SYMBOLS = 1_000_000


def cv_key_sigma(params, t, xi, sigma_t, sigma_xi):
    """Propagate the estimators' standard deviations through K(T, xi) by finite differences."""
    def k(tt, xx):
        return cv_gg02_key(tt, xx, params.modulation_variance, params.homodyne_efficiency,
                           params.electronic_noise, params.reconciliation_efficiency, params.detection)["K"]
    dk_dxi = (k(t, xi + 1e-3) - k(t, max(xi - 1e-3, 0))) / (xi + 1e-3 - max(xi - 1e-3, 0))
    dk_dt = (k(t * 1.001, xi) - k(t * 0.999, xi)) / (0.002 * t)
    return math.hypot(dk_dxi * sigma_xi, dk_dt * sigma_t)


@pytest.mark.parametrize("length_km", CV_SETTINGS)
def test_cv_matches_the_model(length_km):
    params = LinkParams.for_technology("cv-qkd", length_km=length_km)
    result = run_block(params, block_size=CV_SYMBOLS, seed=int(length_km), config=PipelineConfig(pe_fraction=0.5))
    assert_keys_ok(result)
    tel = result.telemetry
    t_true = params.channel_transmittance
    assert_within(tel["transmittance"], t_true, tel["transmittance_sigma"], "T")
    assert_within(tel["excess_noise_snu"], params.excess_noise, tel["excess_noise_sigma"], "xi")
    assert_within(tel["v_mod_snu"], params.modulation_variance,
                  params.modulation_variance * math.sqrt(2 / tel["pe_sample_symbols"]), "V_mod")
    p_err = expected_sign_error(params, AttackConfig())
    assert_within(tel["qber"], p_err, math.sqrt(p_err * (1 - p_err) / tel["pe_sample_symbols"]), "sign errors")
    k_model = performance(params).details["K"]
    sigma = cv_key_sigma(params, t_true, params.excess_noise, tel["transmittance_sigma"], tel["excess_noise_sigma"])
    assert_within(tel["bits_per_symbol"], k_model, sigma, "K")


def test_cv_excess_noise_injection_lowers_the_rate_as_the_formula_predicts():
    params = LinkParams.for_technology("cv-qkd", length_km=5.0)
    config = PipelineConfig(pe_fraction=0.5)
    rates = []
    for injected in (0.0, 0.05, 0.1):
        result = run_block(params, AttackConfig(cv_excess_noise_snu=injected), block_size=CV_SYMBOLS, seed=4,
                           config=config)
        tel = result.telemetry
        xi_true = params.excess_noise + injected
        assert_within(tel["excess_noise_snu"], xi_true, tel["excess_noise_sigma"], "xi")
        k_model = performance(params.with_changes(excess_noise=xi_true)).details["K"]
        sigma = cv_key_sigma(params, params.channel_transmittance, xi_true, tel["transmittance_sigma"],
                             tel["excess_noise_sigma"])
        assert_within(tel["bits_per_symbol"], k_model, sigma, "K")
        rates.append(tel["secret_key_rate_bps"])
    assert rates[0] > rates[1] > rates[2]
    heavy = run_block(params, AttackConfig(cv_excess_noise_snu=0.5), block_size=200_000, seed=4)
    assert heavy.aborted and "excess noise" in heavy.telemetry["abort_reason"]


def test_cv_heterodyne_block():
    params = LinkParams.for_technology("cv-qkd", length_km=10.0, detection="heterodyne")
    result = run_block(params, block_size=300_000, seed=2)
    assert_keys_ok(result)
    assert result.telemetry["raw_bits"] == 600_000  # two quadratures per symbol


# ------------------------------------------------------------------------------------- statistical mode, producer
@pytest.mark.parametrize("technology", ["dv-bb84-decoy", "e91", "cv-qkd"])
def test_statistical_mode_gives_both_ends_the_same_key(technology):
    params = LinkParams.for_technology(technology, length_km=20.0)
    size = block_size_for(params, 200_000)
    a = run_statistical_block(params, block_size=size, seed=1)
    assert_keys_ok(a)
    assert a.telemetry["mode"] == "statistical"
    b = run_statistical_block(params, block_size=size, seed=2)
    assert a.alice_key != b.alice_key
    attacked = run_statistical_block(params, AttackConfig(intercept_resend_fraction=1.0,
                                                          cv_excess_noise_snu=0.5), block_size=size, seed=1)
    assert attacked.aborted and attacked.alice_key == b""


def test_block_producer_mixes_modes_and_applies_attacks_from_the_next_block():
    params = LinkParams.from_mapping({"total_loss_db": 10.0})
    producer = LinkBlockProducer(params, protocol_fraction=0.5, block_size=block_size_for(params, 60_000), seed=9)
    modes = [producer.next_block().telemetry["mode"] for _ in range(8)]
    assert set(modes) == {"protocol", "statistical"}
    producer.set_attack(AttackConfig(intercept_resend_fraction=1.0))
    for _ in range(3):
        block = producer.next_block()
        assert block.aborted and block.telemetry["qber"] > 0.2
    producer.set_attack(AttackConfig())
    assert not producer.next_block().aborted


def test_block_producer_auto_fraction_samples_fast_links_and_simulates_slow_ones_fully():
    slow = LinkParams.from_mapping({"total_loss_db": 30.0, "pulse_rate_hz": 1e8})  # ~2 kbit/s
    producer = LinkBlockProducer(slow, protocol_fraction=None, block_size=block_size_for(slow, 30_000), seed=1)
    blocks = [producer.next_block() for _ in range(3)]
    assert all(b.telemetry["mode"] == "protocol" for b in blocks)
    fast = LinkParams.from_mapping({"total_loss_db": 2.0, "pulse_rate_hz": 1e10})  # ~150 Mbit/s
    producer = LinkBlockProducer(fast, protocol_fraction=None, block_size=block_size_for(fast, 30_000), seed=1)
    first = producer.next_block()
    assert first.telemetry["mode"] == "protocol"
    later = [producer.next_block() for _ in range(6)]
    assert producer.current_protocol_fraction() < 0.5
    assert any(b.telemetry["mode"] == "statistical" for b in later)
    assert all(b.alice_key == b.bob_key for b in later)


def test_residual_errors_are_caught_by_verification_and_the_block_discarded():
    # One Cascade pass leaves blocks with an even number of errors; the 64-bit hash must catch them.
    params = LinkParams.from_mapping({"total_loss_db": 10.0, "misalignment_error": 0.03})
    size = block_size_for(params, 100_000)
    result = run_block(params, block_size=size, seed=2, config=PipelineConfig(cascade_passes=1))
    assert result.aborted and result.telemetry["abort_reason"] == "verification failed"
    assert result.alice_key == result.bob_key == b""
    assert result.telemetry["final_bits"] == 0


def test_dead_time_saturates_the_click_rate():
    params = LinkParams.from_mapping({"total_loss_db": 3.0, "dead_time_s": 1e-7})
    size = 20_000_000
    result = run_block(params, block_size=size, seed=3)
    gain = performance(params.with_changes(dead_time_s=0.0)).details["Q_mu"]
    model = expected_class_model(params, AttackConfig())
    probs = np.array([1 - params.decoy_probability - params.vacuum_probability, params.decoy_probability,
                      params.vacuum_probability])
    mean_gain = float(model["gain"] @ probs)
    keep = 1 / (1 + mean_gain * params.pulse_rate_hz * 1e-7)
    assert keep < 0.6  # strongly saturated
    expected_clicks = size * mean_gain * keep
    assert_within(result.telemetry["raw_bits"], expected_clicks, math.sqrt(expected_clicks), "clicks")
    assert gain > mean_gain * keep


def test_attack_config_from_mapping_validates():
    from services.sdqkd.physics.analytical import PhysicsParameterError

    attack = AttackConfig.from_mapping({"intercept_resend_fraction": 0.5})
    assert attack.active and attack.intercept_resend_fraction == 0.5
    assert not AttackConfig().active
    for bad, field in [({"intercept_resend_fraction": 1.5}, "intercept_resend_fraction"),
                       ({"laser_damage": 1}, "laser_damage"), ({"cv_excess_noise_snu": "x"}, "cv_excess_noise_snu")]:
        with pytest.raises(PhysicsParameterError) as err:
            AttackConfig.from_mapping(bad)
        assert err.value.field == field
