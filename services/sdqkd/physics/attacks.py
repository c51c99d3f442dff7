"""Eavesdropping attacks and faults, as parameters of the simulation (set and cleared by the twin's admin API)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .analytical import PhysicsParameterError


@dataclass(frozen=True)
class AttackConfig:
    # Fraction of pulses (DV) or pairs (E91) Eve measures in a random basis and resends. Full attack: QBER ~25 %.
    intercept_resend_fraction: float = 0.0
    # Fraction of pulses under a photon-number-splitting / beam-splitting attack: single photons blocked,
    # one photon of each multi-photon pulse kept, the rest sent on over a lower-loss channel tuned so that the
    # signal gain looks normal. Undetectable without decoys; decoy-state estimation sees it.
    photon_number_splitting_fraction: float = 0.0
    # CV: excess noise Eve adds at the channel input, SNU.
    cv_excess_noise_snu: float = 0.0
    # Extra dark-count (background) probability per gate at Bob's detectors (fault or blinding attempt).
    extra_dark_count_probability: float = 0.0

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> AttackConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, float] = {}
        for name, value in m.items():
            if name not in known:
                raise PhysicsParameterError(str(name), "unknown attack parameter")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise PhysicsParameterError(name, "must be a finite number")
            values[name] = float(value)
        attack = cls(**values)
        for name in ("intercept_resend_fraction", "photon_number_splitting_fraction"):
            if not 0.0 <= getattr(attack, name) <= 1.0:
                raise PhysicsParameterError(name, "must be in [0, 1]")
        if not 0.0 <= attack.cv_excess_noise_snu <= 10.0:
            raise PhysicsParameterError("cv_excess_noise_snu", "must be in [0, 10]")
        if not 0.0 <= attack.extra_dark_count_probability < 1.0:
            raise PhysicsParameterError("extra_dark_count_probability", "must be in [0, 1)")
        return attack

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    def to_mapping(self) -> dict[str, float]:
        return dataclasses.asdict(self)


NO_ATTACK = AttackConfig()
