"""Sifting and parameter estimation helpers shared by both ends and by the statistical mode."""

from __future__ import annotations

import math

import numpy as np

from .analytical import LinkParams, cv_gg02_key
from .quantum_cv import quadratures
from .quantum_e91 import CHSH_PAIRS, KEY_PAIRS


def sample_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """The public random sample of sifted positions revealed for parameter estimation (both ends derive it from
    the same announced seed)."""
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    mask = np.zeros(n, dtype=bool)
    if k:
        mask[np.random.Generator(np.random.PCG64(seed)).choice(n, size=k, replace=False)] = True
    return mask


def e91_masks(a_set: np.ndarray, b_set: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    key = np.zeros(a_set.size, dtype=bool)
    for a, b in KEY_PAIRS:
        key |= (a_set == a) & (b_set == b)
    chsh = np.isin(a_set, (0, 2)) & np.isin(b_set, (0, 2))
    return key, chsh


def chsh_value(same: dict[tuple[int, int], int], total: dict[tuple[int, int], int]) -> float:
    """S from per-setting counts of equal outcomes; E = P(same) - P(different)."""
    s = 0.0
    for a, b, sign in CHSH_PAIRS:
        n = total.get((a, b), 0)
        if n == 0:
            return 0.0
        s += sign * (2.0 * same[(a, b)] / n - 1.0)
    return abs(s)


def chsh_from_bits(a_set, b_set, a_bit, b_bit) -> float:
    same, total = {}, {}
    for a, b, _ in CHSH_PAIRS:
        sel = (a_set == a) & (b_set == b)
        total[(a, b)] = int(sel.sum())
        same[(a, b)] = int((a_bit[sel] == b_bit[sel]).sum())
    return chsh_value(same, total)


def cv_estimate(x: np.ndarray, y: np.ndarray, params: LinkParams) -> dict[str, float]:
    """Transmittance, excess noise and modulation variance from a revealed sample (x Alice's, y Bob's values),
    then the GG02 key per symbol at these estimates (point estimates; see docs/physics.md)."""
    d = quadratures(params)
    x, y = x.ravel(), y.ravel()
    v_a = float(np.mean(x * x))
    g = float(np.mean(x * y) / v_a)
    noise = float(np.mean((y - g * x) ** 2))
    eta, v_el = params.homodyne_efficiency, params.electronic_noise
    t = max(g * g * d / eta, 1e-12)
    xi = (noise - 1.0 - v_el) * d / (eta * t)
    k = cv_gg02_key(t, max(xi, 0.0), v_a, eta, v_el, params.reconciliation_efficiency, params.detection)
    # One-sigma statistical errors of the estimates (Gaussian sample of m pairs).
    m = x.size
    sigma_t = 2.0 * t * math.sqrt(noise / (m * g * g * v_a)) if g else float("inf")
    sigma_xi = noise * math.sqrt(2.0 / m) * d / (eta * t)
    return {"transmittance": t, "excess_noise_snu": xi, "v_mod_snu": v_a, "snr": g * g * v_a / noise,
            "transmittance_sigma": sigma_t, "excess_noise_sigma": sigma_xi, **k}
