"""Quantum layer of GG02 CV-QKD in shot-noise units.

Alice draws Gaussian quadratures x ~ N(0, V_A); the channel (transmittance T, excess noise xi at its input) and
Bob's coherent receiver (efficiency eta, electronic noise v_el) give, per measured quadrature,
homodyne:   y = sqrt(eta T) x + z,   Var z = 1 + v_el + eta T xi
heterodyne: y = sqrt(eta T / 2) x + z,  Var z = 1 + v_el + eta T xi / 2   (both quadratures measured)
which reproduces the variances behind the detector noise chi_hom = ((1 - eta) + v_el) / eta and
chi_het = (1 + (1 - eta) + 2 v_el) / eta of Lodewyck et al. (2007) and Fossier et al. (2009).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .analytical import LinkParams
from .attacks import AttackConfig


@dataclass
class CvRecord:
    n_symbols: int
    values: np.ndarray  # (n_symbols, quadratures): Alice's modulation or Bob's measurement, SNU


def quadratures(params: LinkParams) -> int:
    return 1 if params.detection == "homodyne" else 2


def receiver_gain(params: LinkParams, transmittance: float) -> float:
    """Amplitude gain from Alice's quadrature to Bob's measured one."""
    g2 = params.homodyne_efficiency * transmittance / quadratures(params)
    return math.sqrt(g2)


def noise_variance(params: LinkParams, transmittance: float, excess_noise: float) -> float:
    g2 = params.homodyne_efficiency * transmittance / quadratures(params)
    return 1.0 + params.electronic_noise + g2 * excess_noise


def expected_sign_error(params: LinkParams, attack: AttackConfig) -> float:
    """Probability that sign(x) and sign(y) differ: arccos(rho) / pi for correlation rho."""
    t = params.channel_transmittance
    g = receiver_gain(params, t)
    var_n = noise_variance(params, t, params.excess_noise + attack.cv_excess_noise_snu)
    rho = g * math.sqrt(params.modulation_variance) / math.sqrt(g * g * params.modulation_variance + var_n)
    return math.acos(rho) / math.pi


def simulate_cv(
    params: LinkParams, attack: AttackConfig, n_symbols: int, rng: np.random.Generator
) -> tuple[CvRecord, CvRecord]:
    d = quadratures(params)
    t = params.channel_transmittance
    x = rng.standard_normal((n_symbols, d)) * math.sqrt(params.modulation_variance)
    xi = params.excess_noise + attack.cv_excess_noise_snu
    y = receiver_gain(params, t) * x + rng.standard_normal((n_symbols, d)) * math.sqrt(noise_variance(params, t, xi))
    return CvRecord(n_symbols, x), CvRecord(n_symbols, y)
