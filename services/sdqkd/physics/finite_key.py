"""Finite-key lengths: BB84/BBM92 (Tomamichel, Lim, Gisin, Renner 2012) and decoy-state BB84 with the vacuum + weak
decoy bounds of Ma, Qi, Zhao, Lo (2005), statistical fluctuations taken at ``n_sigma`` standard deviations."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .analytical import finite_key_length, h2

__all__ = ["DecoyEstimate", "decoy_estimate", "decoy_key_length", "finite_key_length", "pa_overhead_bits"]

EPS_SEC = 1e-10
EPS_COR = 1e-15
# ~6.4 sigma: one-sided Gaussian tail of 1e-10 per estimated quantity (matches eps_sec).
N_SIGMA = 6.4


def pa_overhead_bits(eps_sec: float = EPS_SEC, eps_cor: float = EPS_COR) -> float:
    return math.log2(2.0 / (eps_sec**2 * eps_cor))


def mu_pe(n: float, k: float, eps_sec: float = EPS_SEC) -> float:
    """Sampling correction of an error rate measured on k bits and applied to n bits."""
    if n <= 0 or k <= 0:
        return 0.5
    return math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2.0 / eps_sec))


@dataclass(frozen=True)
class DecoyEstimate:
    q_mu: float  # signal gain (detections per signal pulse)
    q_nu: float  # weak-decoy gain
    y0: float  # vacuum yield
    e_nu: float  # weak-decoy QBER (sifted)
    y1_lower: float  # single-photon yield, lower bound
    e1_upper: float  # single-photon error rate, upper bound
    q1_lower: float  # single-photon gain of the signal state, lower bound

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def decoy_estimate(
    mu: float, nu: float,
    pulses: tuple[int, int, int], detections: tuple[int, int, int],
    decoy_sifted: int, decoy_errors: int, n_sigma: float = N_SIGMA,
) -> DecoyEstimate:
    """Vacuum + weak decoy bounds. pulses/detections are per class (signal, decoy, vacuum)."""
    n_mu, n_nu, n_0 = pulses
    d_mu, d_nu, d_0 = detections
    q_mu = d_mu / n_mu if n_mu else 0.0
    q_nu = d_nu / n_nu if n_nu else 0.0
    y0 = d_0 / n_0 if n_0 else 0.0
    e_nu = decoy_errors / decoy_sifted if decoy_sifted else 0.5
    # Fluctuation bounds on the counts (Poisson, Gaussian approximation).
    q_nu_l = max(d_nu - n_sigma * math.sqrt(d_nu), 0.0) / n_nu if n_nu else 0.0
    q_mu_u = (d_mu + n_sigma * math.sqrt(max(d_mu, 1))) / n_mu if n_mu else 1.0
    y0_u = (d_0 + n_sigma * math.sqrt(max(d_0, 1))) / n_0 if n_0 else 1.0
    y0_l = max(d_0 - n_sigma * math.sqrt(d_0), 0.0) / n_0 if n_0 else 0.0
    # Errors per decoy pulse, upper bound (decoy_errors / decoy_sifted scaled to all decoy detections).
    err_rate_u = (decoy_errors + n_sigma * math.sqrt(max(decoy_errors, 1))) / max(decoy_sifted, 1) * q_nu
    y1_l = mu / (mu * nu - nu * nu) * (
        q_nu_l * math.exp(nu) - q_mu_u * math.exp(mu) * nu * nu / (mu * mu) - (mu * mu - nu * nu) / (mu * mu) * y0_u
    )
    y1_l = max(y1_l, 0.0)
    e1_u = (err_rate_u * math.exp(nu) - 0.5 * y0_l) / (y1_l * nu) if y1_l > 0 else 0.5
    e1_u = min(max(e1_u, 0.0), 0.5)
    return DecoyEstimate(q_mu, q_nu, y0, e_nu, y1_l, e1_u, y1_l * mu * math.exp(-mu))


def decoy_key_length(
    n_key: int, estimate: DecoyEstimate, leak_ec: int, eps_sec: float = EPS_SEC, eps_cor: float = EPS_COR
) -> int:
    """Secret length from n_key signal-state sifted bits: only the (lower-bounded) single-photon part is secret."""
    if n_key <= 0 or estimate.q_mu <= 0 or estimate.y1_lower <= 0:
        return 0
    s1 = n_key * min(estimate.q1_lower / estimate.q_mu, 1.0)
    phase_error = estimate.e1_upper
    if phase_error >= 0.5:
        return 0
    length = s1 * (1.0 - h2(phase_error)) - leak_ec - pa_overhead_bits(eps_sec, eps_cor)
    return max(math.floor(length), 0)
