"""Key block producers: the seam between a QKD link's physics and its key stores.

A producer yields blocks of secret key that are identical at both ends of the link. The analytical producer
here draws the bytes from ``os.urandom`` at the model's secret key rate. ``simulated.SimulatedBlockProducer``
implements the same protocol for links in mode ``protocol`` or ``statistical``: both ends run the post-processing
separately and each end's store receives that end's own key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.sdqkd.physics.analytical import LinkParams, LinkPerformance, performance


@dataclass(frozen=True)
class KeyBlock:
    """One block of distilled secret key; ``key`` is the same bytes at both ends of the link.

    A two-party producer gives ``key`` as the generating end's copy, ``peer_key`` as the other end's own copy
    when that end lives in this process, and ``cut`` (epoch, offset, nbytes) for the other end to cut its own
    copy from its buffer when it does not (no key bytes cross the node-to-node interface then)."""

    key: bytes
    telemetry: dict[str, Any] = field(default_factory=dict)
    peer_key: bytes | None = None
    cut: dict[str, Any] | None = None


class BlockProducer(Protocol):
    """What a link runner needs from a key source."""

    block_size_bits: int

    def seconds_per_block(self) -> float:
        """Wall-clock seconds between blocks at the current conditions (``inf`` when no key can be made)."""
        ...

    def next_block(self) -> KeyBlock:
        """Produce the next block (called when one is due)."""
        ...

    def performance(self) -> LinkPerformance:
        """The link's current secret key rate and QBER."""
        ...

    def set_params(self, params: LinkParams) -> None:
        """Change the physical conditions (attenuation, noise...); the rate follows."""
        ...


class AnalyticalBlockProducer:
    """Blocks at the analytical secret key rate times ``time_scale``, with QBER from the same model."""

    def __init__(self, params: LinkParams, block_size_bits: int, time_scale: float = 1.0):
        if block_size_bits <= 0 or block_size_bits % 8:
            raise ValueError("block_size_bits must be a positive multiple of 8")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.block_size_bits = block_size_bits
        self.time_scale = time_scale
        self.blocks_made = 0
        self.set_params(params)

    def set_params(self, params: LinkParams) -> None:
        self.params = params
        self._performance = performance(params)

    def performance(self) -> LinkPerformance:
        return self._performance

    def seconds_per_block(self) -> float:
        rate = self._performance.secret_key_rate_bps * self.time_scale
        return self.block_size_bits / rate if rate > 0 else float("inf")

    def next_block(self) -> KeyBlock:
        self.blocks_made += 1
        perf = self._performance
        return KeyBlock(
            key=os.urandom(self.block_size_bits // 8),
            telemetry={
                "qber": perf.qber,
                "secret_key_rate_bps": perf.secret_key_rate_bps,
                "loss_db": perf.loss_db,
                "block": self.blocks_made,
            },
        )
