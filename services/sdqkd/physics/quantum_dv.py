"""Quantum layer of decoy-state BB84: what each end records for one block of pulses.

Alice sends n pulses with random bits, bases (Z with probability p_z) and intensities (signal mu, weak decoy nu,
vacuum); photon numbers are Poisson; the channel and Bob's detector keep each photon with probability eta; dark
counts click with probability Y0 per gate; misalignment flips a detected photon's bit with probability e_d.
Only detected pulses carry information for post-processing, so the block is sampled exactly but economically:
the number of pulses per (intensity, photon number) is multinomial, the clicks among them binomial, and only the
clicked pulses get per-pulse data. Attacks (``AttackConfig``) act on the same photon-number picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .analytical import LinkParams
from .attacks import AttackConfig

MAX_PHOTONS = 30
SIGNAL, DECOY, VACUUM = 0, 1, 2


@dataclass
class DvAliceRecord:
    n_pulses: int
    pulses_per_class: np.ndarray  # (3,) pulses sent as signal, decoy, vacuum
    pulse_index: np.ndarray  # sorted indices of the pulses Bob detected (Alice looks her data up by index)
    bit: np.ndarray
    basis: np.ndarray  # 0 = Z, 1 = X
    intensity: np.ndarray  # SIGNAL / DECOY / VACUUM


@dataclass
class DvBobRecord:
    n_pulses: int
    pulse_index: np.ndarray  # sorted indices of detected pulses
    bit: np.ndarray
    basis: np.ndarray


def z_basis_probability(sift_factor: float) -> float:
    """Basis bias p with p^2 + (1 - p)^2 = sift factor (1/2 for standard BB84)."""
    return 0.5 * (1.0 + math.sqrt(max(2.0 * sift_factor - 1.0, 0.0)))


def intensities(params: LinkParams) -> np.ndarray:
    return np.array([params.mean_photon_number, params.decoy_mean_photon_number, 0.0])


def class_probabilities(params: LinkParams) -> np.ndarray:
    p_decoy, p_vac = params.decoy_probability, params.vacuum_probability
    return np.array([1.0 - p_decoy - p_vac, p_decoy, p_vac])


def _poisson(m: float) -> np.ndarray:
    n = np.arange(MAX_PHOTONS + 1)
    logp = n * math.log(m) - m - np.array([math.lgamma(k + 1) for k in n]) if m > 0 else None
    if logp is None:
        p = np.zeros(MAX_PHOTONS + 1)
        p[0] = 1.0
        return p
    p = np.exp(logp)
    p[-1] += max(0.0, 1.0 - p.sum())
    return p


def pns_transmittance(params: LinkParams) -> float:
    """Transmittance Eve gives forwarded photons so the signal gain looks unchanged (bounded by the detector)."""
    eta = params.detector_efficiency * params.channel_transmittance
    mu = params.mean_photon_number
    target = 1.0 - math.exp(-eta * mu)
    pn = _poisson(mu)
    n = np.arange(MAX_PHOTONS + 1)

    def gain(x: float) -> float:
        return float(np.sum(pn[2:] * (1.0 - (1.0 - x) ** (n[2:] - 1))))

    lo, hi = 0.0, params.detector_efficiency
    if gain(hi) <= target:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gain(mid) < target else (lo, mid)
    return (lo + hi) / 2


def click_probabilities(params: LinkParams, attack: AttackConfig, pns: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per photon number n: P(a photon is detected), P(only a dark count clicks)."""
    y0 = params.dark_count_probability + attack.extra_dark_count_probability
    eta = params.detector_efficiency * params.channel_transmittance
    n = np.arange(MAX_PHOTONS + 1)
    if pns:
        # Single photons blocked; one photon of every multi-photon pulse kept, the others forwarded.
        forwarded = np.maximum(n - 1, 0)
        p_photon = 1.0 - (1.0 - pns_transmittance(params)) ** forwarded
    else:
        p_photon = 1.0 - (1.0 - eta) ** n
    p_dark_only = (1.0 - p_photon) * y0
    return p_photon, p_dark_only


def photon_error_probability(params: LinkParams, attack: AttackConfig) -> float:
    """Error probability of a sifted photon detection: misalignment, plus intercept-resend (wrong basis half the
    time, then a random bit)."""
    e_d, f = params.misalignment_error, attack.intercept_resend_fraction
    return (1.0 - f) * e_d + f * (0.5 * 0.5 + 0.5 * e_d)


def expected_class_model(params: LinkParams, attack: AttackConfig) -> dict[str, np.ndarray]:
    """Per intensity class: gain (clicks per pulse, before dead time) and sifted QBER. Shared by the statistical
    mode and the tests' analytical comparison."""
    gains, qbers = [], []
    e_photon = photon_error_probability(params, attack)
    f_pns = attack.photon_number_splitting_fraction
    normal = click_probabilities(params, attack, pns=False)
    attacked = click_probabilities(params, attack, pns=True) if f_pns > 0 else normal
    for m in intensities(params):
        pn = _poisson(m)
        p_photon = np.sum(pn * ((1 - f_pns) * normal[0] + f_pns * attacked[0]))
        p_dark = np.sum(pn * ((1 - f_pns) * normal[1] + f_pns * attacked[1]))
        gain = p_photon + p_dark
        gains.append(gain)
        qbers.append((p_photon * e_photon + 0.5 * p_dark) / gain if gain > 0 else 0.5)
    return {"gain": np.array(gains), "qber": np.array(qbers)}


def dead_time_keep_probability(params: LinkParams, clicks: float, n_pulses: int) -> float:
    """Non-paralysable dead time: the fraction of clicks that survive, 1 / (1 + R tau)."""
    if params.dead_time_s <= 0 or n_pulses == 0:
        return 1.0
    click_rate = clicks / (n_pulses / params.pulse_rate_hz)
    return 1.0 / (1.0 + click_rate * params.dead_time_s)


def click_label_probabilities(params: LinkParams, attack: AttackConfig) -> np.ndarray:
    """P(class c and outcome k) per pulse, shape (3, 2): k = 0 a photon was detected, k = 1 only a dark count."""
    f_pns = attack.photon_number_splitting_fraction
    normal = click_probabilities(params, attack, pns=False)
    attacked = click_probabilities(params, attack, pns=True) if f_pns > 0 else normal
    out = np.zeros((3, 2))
    for c, (m, p_class) in enumerate(zip(intensities(params), class_probabilities(params), strict=True)):
        pn = _poisson(m)
        for k in (0, 1):
            out[c, k] = p_class * np.sum(pn * ((1 - f_pns) * normal[k] + f_pns * attacked[k]))
    return out


def bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the pulses that click when each of n pulses clicks independently with probability p
    (geometric gaps: O(clicks), never O(pulses))."""
    if p <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    parts, last = [], -1
    for _ in range(10_000):
        expected = (n - 1 - last) * p
        # Geometric gaps by inversion, floor(log U / log(1 - p)) + 1 with U in (0, 1]: 3x faster than
        # Generator.geometric and exact enough (float32 U resolves gaps up to ~1e7 pulses).
        u = 1.0 - rng.random(int(expected + 6 * np.sqrt(expected) + 16), dtype=np.float32)
        gaps = (np.log(u) * np.float32(1.0 / math.log1p(-p))).astype(np.int64) + 1 if p < 1 else np.ones(u.size,
                                                                                                       np.int64)
        pos = last + np.cumsum(gaps)
        parts.append(pos[pos < n])
        if pos[-1] >= n:
            break
        last = int(pos[-1])
    return np.concatenate(parts)


def simulate_bb84_decoy(
    params: LinkParams, attack: AttackConfig, n_pulses: int, rng: np.random.Generator
) -> tuple[DvAliceRecord, DvBobRecord]:
    # Pulses are independent, so the clicked pulses form a Bernoulli process; each click's (intensity, photon or
    # dark count) label follows the conditional distribution, and the pulses that did not click are only counted.
    labels_p = click_label_probabilities(params, attack)
    p_click = max(float(labels_p.sum()), 1e-300)
    # Dead time drops clicks independently of their label, so the surviving clicks are again a Bernoulli
    # process, with probability p_click * keep.
    keep = dead_time_keep_probability(params, p_click * n_pulses, n_pulses)
    index = bernoulli_positions(n_pulses, p_click * keep, rng)
    clicks = index.size
    cdf = (np.cumsum(labels_p.ravel()) / p_click).astype(np.float32)
    label = np.minimum(np.searchsorted(cdf, rng.random(clicks, dtype=np.float32), side="right"), 5)
    intensity = (label // 2).astype(np.uint8)
    photon = label % 2 == 0
    # Pulses per class: the clicked ones (including those lost to dead time), plus the silent ones.
    lost = rng.binomial(n_pulses - clicks, p_click * (1 - keep) / max(1 - p_click * keep, 1e-300))
    lost_per_class = rng.multinomial(lost, labels_p.sum(axis=1) / p_click)
    silent = n_pulses - clicks - lost
    p_silent = np.clip(class_probabilities(params) - labels_p.sum(axis=1), 0.0, None)
    per_class = np.bincount(intensity, minlength=3) + lost_per_class + rng.multinomial(silent,
                                                                                      p_silent / p_silent.sum())
    # Alice's choices on the detected pulses; Bob's basis choice and result (float32 uniforms: half the cost).
    p_z = z_basis_probability(params.sift_factor)
    alice_bit = rng.integers(0, 2, clicks, dtype=np.uint8)
    if p_z == 0.5:
        alice_basis = rng.integers(0, 2, clicks, dtype=np.uint8)
        bob_basis = rng.integers(0, 2, clicks, dtype=np.uint8)
    else:
        alice_basis = (rng.random(clicks, dtype=np.float32) >= p_z).astype(np.uint8)
        bob_basis = (rng.random(clicks, dtype=np.float32) >= p_z).astype(np.uint8)
    # Flip probability of Bob's bit: misalignment for photons, 1/2 for dark counts, for a wrong basis and after
    # Eve measured in the wrong basis (intercept-resend).
    flip_p = np.where(photon, np.float32(params.misalignment_error), np.float32(0.5))
    if attack.intercept_resend_fraction > 0:
        eve_wrong_basis = rng.random(clicks, dtype=np.float32) < attack.intercept_resend_fraction / 2
        flip_p[eve_wrong_basis] = 0.5
    flip_p[alice_basis != bob_basis] = 0.5
    bob_bit = alice_bit ^ (rng.random(clicks, dtype=np.float32) < flip_p).astype(np.uint8)
    alice = DvAliceRecord(n_pulses, per_class, index, alice_bit, alice_basis, intensity)
    bob = DvBobRecord(n_pulses, index.copy(), bob_bit, bob_basis)
    return alice, bob
