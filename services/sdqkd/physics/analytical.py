"""Analytical QKD link models (published models, cited per technology below) and the finite-key length.

- ``dv-bb84-decoy``: decoy-state BB84, asymptotic with infinitely many decoys (Lo, Ma, Chen 2005 /
  GLLP), with a non-paralysable detector dead time saturating the click rate.
- ``e91``: entanglement-based QKD (E91 / BBM92); QBER from the visibility, CHSH S = 2*sqrt(2)*V.
- ``cv-qkd``: GG02 Gaussian-modulated coherent states, reverse reconciliation, collective attacks, homodyne or
  heterodyne detection with trusted detector noise.

Everything here is plain floating-point maths; the protocol simulation (``pipeline``) samples the same models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TECHNOLOGIES = ("dv-bb84-decoy", "e91", "cv-qkd")
DETECTIONS = ("homodyne", "heterodyne")


class PhysicsParameterError(ValueError):
    """A link parameter is unknown, of the wrong type or out of range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LinkParams:
    """All physical parameters of one QKD link. Units are in the comments; defaults depend on the technology.

    Build with ``LinkParams.from_mapping({...})`` (validated, technology defaults filled in) or
    ``LinkParams.for_technology("e91", length_km=10)``.
    """

    technology: str = "dv-bb84-decoy"
    # Channel
    length_km: float = 0.0  # fibre length, km
    attenuation_db_per_km: float = 0.2  # fibre loss, dB/km (0.2 at 1550 nm, 0.33 at 1310 nm)
    extra_loss_db: float = 0.0  # connectors, splices, WDM filters, dB
    total_loss_db: float | None = None  # if set, overrides length * attenuation + extra, dB
    # Discrete-variable source and detectors (dv-bb84-decoy and e91)
    detector_efficiency: float = 0.2  # single-photon detector efficiency (e91: per side), 0..1
    dark_count_probability: float = 1e-6  # background yield Y0 per gate, 0..1
    misalignment_error: float = 0.01  # optical misalignment error e_d, 0..0.5
    pulse_rate_hz: float = 1e9  # DV: pulse (gate) rate; e91: entangled-pair generation rate, Hz
    mean_photon_number: float = 0.5  # signal intensity mu, photons per pulse
    decoy_mean_photon_number: float = 0.1  # weak decoy intensity nu (protocol simulation), photons per pulse
    decoy_probability: float = 0.1  # fraction of pulses sent as weak decoys (protocol simulation)
    vacuum_probability: float = 0.05  # fraction of pulses sent as vacuum decoys (protocol simulation)
    sift_factor: float = 0.5  # fraction of detections kept after basis sifting (0.5 BB84, 2/9 E91)
    ec_efficiency: float = 1.16  # error-correction inefficiency f >= 1 (leak = f * n * H2(QBER))
    dead_time_s: float = 0.0  # detector dead time tau, s (non-paralysable: R_eff = R / (1 + R tau))
    visibility: float = 0.97  # e91: two-photon interference visibility V, 0..1
    # Continuous-variable (cv-qkd), shot-noise units (SNU)
    excess_noise: float = 0.01  # xi at the channel input, SNU
    modulation_variance: float = 4.0  # V_A, SNU
    reconciliation_efficiency: float = 0.95  # beta, 0..1
    electronic_noise: float = 0.05  # v_el, SNU
    homodyne_efficiency: float = 0.6  # eta of the coherent receiver, 0..1
    detection: str = "homodyne"  # "homodyne" | "heterodyne"
    symbol_rate_hz: float = 1e8  # CV symbol rate, Hz
    frame_error_rate: float = 0.0  # CV reconciliation frame error rate, 0..1

    @classmethod
    def for_technology(cls, technology: str, **overrides: Any) -> LinkParams:
        """Technology defaults plus ``overrides``, validated."""
        return cls.from_mapping({"technology": technology, **overrides})

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> LinkParams:
        """Validated parameters from a mapping (topology file, API body). Missing fields take the defaults of
        the mapping's ``technology`` (default ``dv-bb84-decoy``)."""
        if not isinstance(m, Mapping):
            raise PhysicsParameterError("params", "must be a mapping")
        technology = m.get("technology", "dv-bb84-decoy")
        if technology not in TECHNOLOGIES:
            raise PhysicsParameterError("technology", f"must be one of {', '.join(TECHNOLOGIES)}")
        known = {f.name for f in dataclasses.fields(cls)}
        for name in m:
            if name not in known:
                raise PhysicsParameterError(str(name), "unknown parameter")
        values = {**TECHNOLOGY_DEFAULTS[technology], **dict(m)}
        values["technology"] = technology
        return _validated(cls(**{k: _coerce(k, v) for k, v in values.items()}))

    def with_changes(self, **kw: Any) -> LinkParams:
        """A validated copy with some fields changed, e.g. ``with_changes(total_loss_db=12.0)``."""
        known = {f.name for f in dataclasses.fields(self)}
        for name in kw:
            if name not in known:
                raise PhysicsParameterError(name, "unknown parameter")
        if "technology" in kw and kw["technology"] not in TECHNOLOGIES:
            raise PhysicsParameterError("technology", f"must be one of {', '.join(TECHNOLOGIES)}")
        return _validated(dataclasses.replace(self, **{k: _coerce(k, v) for k, v in kw.items()}))

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def loss_db(self) -> float:
        """Channel loss between the two ends, dB (detector efficiency not included)."""
        if self.total_loss_db is not None:
            return self.total_loss_db
        return self.attenuation_db_per_km * self.length_km + self.extra_loss_db

    @property
    def channel_transmittance(self) -> float:
        return 10.0 ** (-self.loss_db / 10.0)


# Defaults per technology: DV the reference set eta_det 0.2, Y0 1e-6, e_d 1 %, mu 0.5, f 1.16, 1 GHz (14.7 Mb/s at
# 2 dB); e91 a polarisation-entangled source with three bases per side; CV the GG02 reference set V_A 4, xi 0.01,
# eta 0.6, v_el 0.05, beta 0.95 (K = 0.38 bit/symbol at 5 km). tests/physics/test_analytical.py pins both.
TECHNOLOGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "dv-bb84-decoy": {},
    "e91": {"pulse_rate_hz": 1e8, "sift_factor": 2.0 / 9.0, "visibility": 0.97},
    "cv-qkd": {},
}

_STRING_FIELDS = {"technology", "detection"}
_OPTIONAL_FIELDS = {"total_loss_db"}
# field -> (low, high, low inclusive, high inclusive)
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "length_km": (0.0, 1e5, True, True),
    "attenuation_db_per_km": (0.0, 10.0, True, True),
    "extra_loss_db": (0.0, 200.0, True, True),
    "total_loss_db": (0.0, 200.0, True, True),
    "detector_efficiency": (0.0, 1.0, False, True),
    "dark_count_probability": (0.0, 1.0, True, False),
    "misalignment_error": (0.0, 0.5, True, True),
    "pulse_rate_hz": (0.0, 1e12, False, True),
    "mean_photon_number": (0.0, 10.0, False, True),
    "decoy_mean_photon_number": (0.0, 10.0, False, True),
    "decoy_probability": (0.0, 1.0, True, False),
    "vacuum_probability": (0.0, 1.0, True, False),
    "sift_factor": (0.0, 1.0, False, True),
    "ec_efficiency": (1.0, 10.0, True, True),
    "dead_time_s": (0.0, 1.0, True, True),
    "visibility": (0.0, 1.0, True, True),
    "excess_noise": (0.0, 10.0, True, True),
    "modulation_variance": (0.0, 1e4, False, True),
    "reconciliation_efficiency": (0.0, 1.0, False, True),
    "electronic_noise": (0.0, 10.0, True, True),
    "homodyne_efficiency": (0.0, 1.0, False, True),
    "symbol_rate_hz": (0.0, 1e12, False, True),
    "frame_error_rate": (0.0, 1.0, True, False),
}


def _coerce(name: str, value: Any) -> Any:
    if name in _STRING_FIELDS:
        if not isinstance(value, str):
            raise PhysicsParameterError(name, "must be a string")
        return value
    if value is None and name in _OPTIONAL_FIELDS:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PhysicsParameterError(name, "must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise PhysicsParameterError(name, "must be finite")
    return value


def _validated(p: LinkParams) -> LinkParams:
    if p.technology not in TECHNOLOGIES:
        raise PhysicsParameterError("technology", f"must be one of {', '.join(TECHNOLOGIES)}")
    if p.detection not in DETECTIONS:
        raise PhysicsParameterError("detection", "must be 'homodyne' or 'heterodyne'")
    for name, (low, high, low_inc, high_inc) in _RANGES.items():
        value = getattr(p, name)
        if value is None:
            continue
        ok_low = value >= low if low_inc else value > low
        ok_high = value <= high if high_inc else value < high
        if not (ok_low and ok_high):
            lo_b = "[" if low_inc else "("
            hi_b = "]" if high_inc else ")"
            raise PhysicsParameterError(name, f"must be in {lo_b}{low:g}, {high:g}{hi_b}")
    if p.decoy_probability + p.vacuum_probability >= 1.0:
        raise PhysicsParameterError("decoy_probability", "decoy + vacuum probabilities must be < 1")
    if p.decoy_mean_photon_number >= p.mean_photon_number:
        raise PhysicsParameterError("decoy_mean_photon_number", "must be below mean_photon_number")
    return p


@dataclass(frozen=True)
class LinkPerformance:
    secret_key_rate_bps: float  # secret bits per second (asymptotic)
    qber: float  # quantum bit error rate of the key bits (CV: 0, see details)
    loss_db: float  # channel loss, dB
    transmittance: float  # channel transmittance (DV: times detector efficiency), 0..1
    details: dict = field(default_factory=dict)


def h2(p: float) -> float:
    """Binary entropy in bits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def _g(x: float) -> float:
    """Von Neumann entropy of a thermal state with mean photon number x."""
    if x <= 0.0:
        return 0.0
    return (x + 1.0) * math.log2(x + 1.0) - x * math.log2(x)


def _dead_time_factor(click_rate_hz: float, dead_time_s: float) -> float:
    # Non-paralysable dead time: the observed click rate is R / (1 + R tau).
    return 1.0 / (1.0 + click_rate_hz * dead_time_s)


def bb84_decoy_rates(
    eta: float, mu: float, y0: float, e_d: float, f: float, q: float
) -> dict[str, float]:
    """Per-pulse quantities of asymptotic decoy-state BB84 (GLLP with infinite decoys)."""
    q_mu = y0 + 1.0 - math.exp(-eta * mu)
    e_mu = (0.5 * y0 + e_d * (1.0 - math.exp(-eta * mu))) / q_mu if q_mu > 0 else 0.5
    y1 = y0 + eta
    e1 = (0.5 * y0 + e_d * eta) / y1 if y1 > 0 else 0.5
    q1 = y1 * mu * math.exp(-mu)
    r = q * (q1 * (1.0 - h2(e1)) - q_mu * f * h2(e_mu))
    return {"Q_mu": q_mu, "E_mu": e_mu, "Y1": y1, "e1": e1, "Q1": q1, "bits_per_pulse": max(r, 0.0)}


def cv_gg02_key(
    transmittance: float,
    excess_noise: float,
    modulation_variance: float,
    detector_efficiency: float,
    electronic_noise: float,
    reconciliation_efficiency: float,
    detection: str = "homodyne",
) -> dict[str, float]:
    """GG02 reverse reconciliation, collective attacks, trusted detector noise: bits per symbol."""
    t, xi, eta, v_el, beta = (
        transmittance, excess_noise, detector_efficiency, electronic_noise, reconciliation_efficiency,
    )
    v = modulation_variance + 1.0
    if t <= 0.0:
        return {"I_AB": 0.0, "chi_BE": 0.0, "K": 0.0, "snr": 0.0}
    chi_line = 1.0 / t - 1.0 + xi
    if detection == "homodyne":
        chi_det = ((1.0 - eta) + v_el) / eta
        i_ab = 0.5 * math.log2((v + chi_line + chi_det / t) / (1.0 + chi_line + chi_det / t))
    else:
        chi_det = (1.0 + (1.0 - eta) + 2.0 * v_el) / eta
        i_ab = math.log2((v + chi_line + chi_det / t) / (1.0 + chi_line + chi_det / t))
    chi_tot = chi_line + chi_det / t
    a = v * v * (1.0 - 2.0 * t) + 2.0 * t + t * t * (v + chi_line) ** 2
    b = t * t * (v * chi_line + 1.0) ** 2
    disc = max(a * a - 4.0 * b, 0.0)
    l1 = math.sqrt((a + math.sqrt(disc)) / 2.0)
    l2 = math.sqrt(max((a - math.sqrt(disc)) / 2.0, 0.0))
    if detection == "homodyne":
        c = (v * math.sqrt(b) + t * (v + chi_line) + a * chi_det) / (t * (v + chi_tot))
        d = math.sqrt(b) * (v + math.sqrt(b) * chi_det) / (t * (v + chi_tot))
    else:
        # Heterodyne (Lodewyck et al. 2007 / Fossier et al. 2009): symplectic eigenvalues conditioned on both
        # quadratures being measured.
        c = (a * chi_det * chi_det + b + 1.0 + 2.0 * chi_det * (v * math.sqrt(b) + t * (v + chi_line))
             + 2.0 * t * (v * v - 1.0)) / (t * t * (v + chi_tot) ** 2)
        d = ((v + math.sqrt(b) * chi_det) / (t * (v + chi_tot))) ** 2
    disc2 = max(c * c - 4.0 * d, 0.0)
    l3 = math.sqrt(max((c + math.sqrt(disc2)) / 2.0, 0.0))
    l4 = math.sqrt(max((c - math.sqrt(disc2)) / 2.0, 0.0))
    chi_be = _g((l1 - 1) / 2) + _g((l2 - 1) / 2) - _g((l3 - 1) / 2) - _g((l4 - 1) / 2)
    k = beta * i_ab - chi_be
    # Signal-to-noise ratio per measured quadrature (heterodyne splits the signal over two quadratures).
    gain = eta * t if detection == "homodyne" else eta * t / 2.0
    snr = gain * modulation_variance / (1.0 + v_el + gain * xi)
    return {"I_AB": i_ab, "chi_BE": chi_be, "K": max(k, 0.0), "snr": snr}


def performance(params: LinkParams) -> LinkPerformance:
    """Asymptotic secret key rate and QBER of a link."""
    p = params
    loss = p.loss_db
    t_channel = p.channel_transmittance
    if p.technology == "dv-bb84-decoy":
        eta = p.detector_efficiency * t_channel
        r = bb84_decoy_rates(
            eta, p.mean_photon_number, p.dark_count_probability, p.misalignment_error, p.ec_efficiency,
            p.sift_factor,
        )
        click_rate = r["Q_mu"] * p.pulse_rate_hz
        dead = _dead_time_factor(click_rate, p.dead_time_s)
        skr = r["bits_per_pulse"] * p.pulse_rate_hz * dead
        details = {**r, "eta": eta, "detection_rate_hz": click_rate * dead, "dead_time_factor": dead,
                   "sifted_rate_bps": click_rate * dead * p.sift_factor}
        return LinkPerformance(skr, r["E_mu"], loss, eta, details)
    if p.technology == "e91":
        # Source at one end: a pair counts when both photons are detected (local detector, fibre + far one).
        coincidence = p.detector_efficiency**2 * t_channel
        qber = (1.0 - p.visibility) / 2.0
        chsh = 2.0 * math.sqrt(2.0) * p.visibility
        det_rate = coincidence * p.pulse_rate_hz
        dead = _dead_time_factor(det_rate, p.dead_time_s)
        det_rate *= dead
        fraction = max(1.0 - h2(qber) - p.ec_efficiency * h2(qber), 0.0) if chsh > 2.0 else 0.0
        skr = det_rate * p.sift_factor * fraction
        details = {"chsh_s": chsh, "coincidence_probability": coincidence, "detection_rate_hz": det_rate,
                   "sifted_rate_bps": det_rate * p.sift_factor, "secret_fraction": fraction,
                   "dead_time_factor": dead}
        return LinkPerformance(skr, qber, loss, coincidence, details)
    # cv-qkd
    r = cv_gg02_key(
        t_channel, p.excess_noise, p.modulation_variance, p.homodyne_efficiency, p.electronic_noise,
        p.reconciliation_efficiency, p.detection,
    )
    skr = r["K"] * p.symbol_rate_hz * (1.0 - p.frame_error_rate)
    details = {**r, "bits_per_symbol": r["K"], "excess_noise_snu": p.excess_noise,
               "modulation_variance_snu": p.modulation_variance}
    return LinkPerformance(skr, 0.0, loss, t_channel, details)


def finite_key_length(
    n: int, k: int, qber: float, leak_ec: int, eps_sec: float = 1e-10, eps_cor: float = 1e-15
) -> int:
    """Secret key length after privacy amplification (Tomamichel et al. 2012, BB84).

    n: bits kept for the key, k: bits sacrificed for parameter estimation, qber: QBER measured on the k bits,
    leak_ec: bits leaked by error correction and verification. Never negative.
    """
    if n <= 0 or k <= 0:
        return 0
    mu_pe = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2.0 / eps_sec))
    q = qber + mu_pe
    if q >= 0.5:
        return 0
    length = n * (1.0 - h2(q)) - leak_ec - math.log2(2.0 / (eps_sec**2 * eps_cor))
    return max(math.floor(length), 0)
