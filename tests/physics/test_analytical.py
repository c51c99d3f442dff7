"""The analytical link models reproduce reference values: decoy BB84 (eta_det 0.2, Y0 1e-6, e_d 1 %, mu 0.5,
f 1.16, 1 GHz), the GYS parameter set of Gobby, Yuan, Shields (2004) as in Ma, Qi, Zhao, Lo (2005), and GG02
CV-QKD (V_A 4, xi 0.01, eta 0.6, v_el 0.05, beta 0.95)."""

import math

import pytest

from services.sdqkd.physics.analytical import (
    LinkParams,
    LinkPerformance,
    PhysicsParameterError,
    finite_key_length,
    h2,
    performance,
)


@pytest.mark.parametrize(
    ("loss_db", "expected_bps"),
    [(2.0, 14.7e6), (10.0, 2.3e6), (20.0, 230e3), (30.0, 21e3)],
)
def test_bb84_decoy_reference_rates(loss_db, expected_bps):
    # Handbook set: eta_det 0.2, Y0 1e-6, e_d 1 %, mu 0.5, f 1.16, 1 GHz, q = 1/2 (the defaults).
    perf = performance(LinkParams.from_mapping({"total_loss_db": loss_db}))
    assert isinstance(perf, LinkPerformance)
    assert perf.secret_key_rate_bps == pytest.approx(expected_bps, rel=0.01)
    assert 0.009 < perf.qber < 0.016
    assert perf.loss_db == loss_db


def gys(**kw):
    return LinkParams.from_mapping(dict(
        attenuation_db_per_km=0.21, misalignment_error=0.033, dark_count_probability=1.7e-6,
        detector_efficiency=0.045, ec_efficiency=1.22, mean_photon_number=0.48, **kw))


def test_bb84_decoy_gys_parameter_set():
    assert performance(gys()).details["bits_per_pulse"] == pytest.approx(2.55e-3, rel=0.01)
    assert performance(gys(length_km=138.0)).secret_key_rate_bps > 0
    assert performance(gys(length_km=146.0)).secret_key_rate_bps == 0


def test_dead_time_saturates_short_links():
    fast = performance(LinkParams.from_mapping({"total_loss_db": 2.0}))
    slow = performance(LinkParams.from_mapping({"total_loss_db": 2.0, "dead_time_s": 50e-9}))
    click_rate = fast.details["detection_rate_hz"]
    assert slow.secret_key_rate_bps == pytest.approx(fast.secret_key_rate_bps / (1 + click_rate * 50e-9))
    # Far links barely notice the dead time.
    far = LinkParams.from_mapping({"total_loss_db": 30.0})
    assert performance(far.with_changes(dead_time_s=50e-9)).secret_key_rate_bps == pytest.approx(
        performance(far).secret_key_rate_bps, rel=1e-2)


@pytest.mark.parametrize(("length_km", "expected_k"), [(5.0, 0.38), (25.0, 0.088), (50.0, 0.022)])
def test_cv_gg02_reference_values(length_km, expected_k):
    params = LinkParams.for_technology("cv-qkd", length_km=length_km)
    perf = performance(params)
    assert perf.details["bits_per_symbol"] == pytest.approx(expected_k, rel=0.02)
    assert perf.secret_key_rate_bps == pytest.approx(perf.details["K"] * params.symbol_rate_hz)


def test_cv_excess_noise_and_frame_errors_lower_the_rate():
    base = LinkParams.for_technology("cv-qkd", length_km=25.0)
    rates = [performance(base.with_changes(excess_noise=xi)).secret_key_rate_bps for xi in (0.01, 0.03, 0.05)]
    assert rates[0] > rates[1] > rates[2]
    assert performance(base.with_changes(excess_noise=0.3)).secret_key_rate_bps == 0
    lossy = performance(base.with_changes(frame_error_rate=0.25)).secret_key_rate_bps
    assert lossy == pytest.approx(0.75 * rates[0])


def test_cv_heterodyne_gives_key_close_to_homodyne():
    hom = performance(LinkParams.for_technology("cv-qkd", length_km=25.0))
    het = performance(LinkParams.for_technology("cv-qkd", length_km=25.0, detection="heterodyne"))
    assert het.details["I_AB"] > hom.details["I_AB"]  # two quadratures measured
    assert het.secret_key_rate_bps == pytest.approx(hom.secret_key_rate_bps, rel=0.25)


@pytest.mark.parametrize("visibility", [0.99, 0.9, 0.7, 0.5])
def test_e91_chsh_and_qber_from_visibility(visibility):
    perf = performance(LinkParams.for_technology("e91", length_km=10.0, visibility=visibility))
    assert perf.details["chsh_s"] == pytest.approx(2 * math.sqrt(2) * visibility)
    assert perf.qber == pytest.approx((1 - visibility) / 2)
    if perf.details["chsh_s"] <= 2:
        assert perf.secret_key_rate_bps == 0
    else:
        q = perf.qber
        expected = perf.details["detection_rate_hz"] * 2 / 9 * max(0.0, 1 - h2(q) - 1.16 * h2(q))
        assert perf.secret_key_rate_bps == pytest.approx(expected)


def test_loss_from_length_or_total_override():
    p = LinkParams.from_mapping({"length_km": 23.0, "extra_loss_db": 0.5})
    assert p.loss_db == pytest.approx(23 * 0.2 + 0.5)
    assert p.with_changes(total_loss_db=12.0).loss_db == 12.0
    assert performance(p.with_changes(total_loss_db=12.0)).loss_db == 12.0


def test_technology_defaults():
    assert LinkParams.from_mapping({"technology": "e91"}).sift_factor == pytest.approx(2 / 9)
    assert LinkParams.from_mapping({}).technology == "dv-bb84-decoy"


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"technology": "teleportation"}, "technology"),
        ({"length_km": "ten"}, "length_km"),
        ({"length_km": True}, "length_km"),
        ({"length_km": -1}, "length_km"),
        ({"detector_efficiency": 1.5}, "detector_efficiency"),
        ({"detector_efficiency": 0}, "detector_efficiency"),
        ({"ec_efficiency": 0.9}, "ec_efficiency"),
        ({"technology": "cv-qkd", "detection": "photon-counting"}, "detection"),
        ({"mean_photon_number": float("nan")}, "mean_photon_number"),
    ],
)
def test_invalid_parameters_name_the_field(mapping, field):
    with pytest.raises(PhysicsParameterError) as err:
        LinkParams.from_mapping(mapping)
    assert err.value.field == field
    assert err.value.message
    assert isinstance(err.value, ValueError)


def test_with_changes_validates():
    p = LinkParams.from_mapping({})
    with pytest.raises(PhysicsParameterError) as err:
        p.with_changes(misalignment_error=0.7)
    assert err.value.field == "misalignment_error"
    with pytest.raises(PhysicsParameterError):
        p.with_changes(nonsense=1)
    assert p.with_changes(length_km=5).length_km == 5.0
    assert p.length_km == 0.0  # frozen original unchanged


def test_finite_key_length_formula():
    n, k, q, leak = 1_000_000, 100_000, 0.02, 150_000
    mu_pe = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2 / 1e-10))
    expected = n * (1 - h2(q + mu_pe)) - leak - math.log2(2 / (1e-20 * 1e-15))
    assert finite_key_length(n, k, q, leak) == math.floor(expected)
    # Longer blocks approach the asymptotic fraction; tiny blocks and high QBER give nothing.
    big = finite_key_length(10**8, 10**7, q, int(1.16 * h2(q) * 10**8)) / 10**8
    assert big == pytest.approx(1 - h2(q) - 1.16 * h2(q), abs=0.01)
    assert finite_key_length(1000, 100, q, 100) == 0
    assert finite_key_length(n, k, 0.2, int(1.16 * h2(0.2) * n)) == 0
