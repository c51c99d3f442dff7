"""Quantum layer of E91: polarisation-entangled pairs |Phi+>, three measurement angles per side.

Alice measures at 0, pi/8, pi/4 and Bob at pi/8, pi/4, 3pi/8 (uniformly random). Equal angles (Alice 1 / Bob 0,
Alice 2 / Bob 1: 2/9 of the pairs) give key; Alice {0, 2} x Bob {0, 2} give the CHSH value
S = |E(a0,b0) - E(a0,b2) + E(a2,b0) + E(a2,b2)| = 2 sqrt(2) V. With visibility V a pair is ideal with probability
V and white noise (independent random outcomes) otherwise. Intercept-resend: Eve measures Bob's photon at a random
angle and resends her result, which leaves only classical correlations (S = sqrt(2) V, QBER ~25 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .analytical import LinkParams
from .attacks import AttackConfig
from .quantum_dv import bernoulli_positions

ALICE_ANGLES = np.array([0.0, math.pi / 8, math.pi / 4])
BOB_ANGLES = np.array([math.pi / 8, math.pi / 4, 3 * math.pi / 8])
KEY_PAIRS = ((1, 0), (2, 1))  # (Alice setting, Bob setting) with equal angles
CHSH_PAIRS = ((0, 0, 1), (0, 2, -1), (2, 0, 1), (2, 2, 1))  # (Alice, Bob, sign)


@dataclass
class E91Record:
    n_pairs: int
    pulse_index: np.ndarray  # sorted pair indices with a coincidence
    setting: np.ndarray  # 0..2
    bit: np.ndarray


def coincidence_probability(params: LinkParams) -> float:
    return params.detector_efficiency**2 * params.channel_transmittance


def expected_e91(params: LinkParams, attack: AttackConfig) -> dict[str, float]:
    v, f = params.visibility, attack.intercept_resend_fraction
    qber = v * f * 0.25 + (1 - v) * 0.5
    chsh = v * (2 * math.sqrt(2) * (1 - f) + math.sqrt(2) * f)
    return {"qber": qber, "chsh_s": chsh}


def simulate_e91(
    params: LinkParams, attack: AttackConfig, n_pairs: int, rng: np.random.Generator
) -> tuple[E91Record, E91Record]:
    # Pairs detected in coincidence (plus accidental coincidences from extra dark counts) form a Bernoulli process.
    p_pair = coincidence_probability(params)
    p_noise = attack.extra_dark_count_probability
    index = bernoulli_positions(n_pairs, min(p_pair + p_noise, 1.0), rng)
    total = index.size
    ideal = rng.random(total) < params.visibility * p_pair / max(p_pair + p_noise, 1e-300)
    a_set = rng.integers(0, 3, total).astype(np.uint8)
    b_set = rng.integers(0, 3, total).astype(np.uint8)
    a_bit = rng.integers(0, 2, total, dtype=np.uint8)
    # Ideal pair: Bob's outcome equals Alice's with probability cos^2(angle difference).
    p_same = np.cos(ALICE_ANGLES[:, None] - BOB_ANGLES[None, :]) ** 2
    same = rng.random(total) < p_same[a_set, b_set]
    b_bit = np.where(same, a_bit, 1 - a_bit).astype(np.uint8)
    # Attacked pair: both photons collapse to Eve's result at a random angle phi.
    att = np.flatnonzero(rng.random(total) < attack.intercept_resend_fraction)
    if att.size:
        phi = rng.random(att.size) * math.pi
        eve = rng.integers(0, 2, att.size, dtype=np.uint8)
        a_ok = rng.random(att.size) < np.cos(ALICE_ANGLES[a_set[att]] - phi) ** 2
        b_ok = rng.random(att.size) < np.cos(BOB_ANGLES[b_set[att]] - phi) ** 2
        a_bit[att] = np.where(a_ok, eve, 1 - eve)
        b_bit[att] = np.where(b_ok, eve, 1 - eve)
    # White noise (the 1 - V share and accidentals): Bob's outcome independent of Alice's.
    noisy = np.flatnonzero(~ideal)
    b_bit[noisy] = rng.integers(0, 2, noisy.size, dtype=np.uint8)
    alice = E91Record(n_pairs, index, a_set, a_bit)
    bob = E91Record(n_pairs, index.copy(), b_set, b_bit)
    return alice, bob
