"""Fixed-size key blocks from the protocol pipeline, in the shape the twin's link runner consumes.

The pipeline's blocks vary in length (finite-key accounting) and some abort; a key store wants blocks of a fixed
size paced at the link's rate. ``ProtocolKeyStream`` buffers both ends' final keys, cuts them into blocks of
``block_size_bits`` and reports the rate actually achieved, so the twin can pace deliveries (the simulation may
run ahead of real time). It duck-types the twin's ``BlockProducer`` protocol: ``block_size_bits``,
``seconds_per_block()``, ``next_block()``, ``performance()``, ``set_params()``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .analytical import LinkParams, LinkPerformance, performance
from .attacks import NO_ATTACK, AttackConfig
from .pipeline import DEFAULT_CONFIG, LinkBlockProducer, PipelineConfig


class KeyStreamStalled(RuntimeError):
    """Too many pipeline blocks in a row produced no key (attack, fault or too much loss)."""


@dataclass(frozen=True)
class StreamBlock:
    key: bytes  # identical at both ends
    telemetry: dict[str, Any] = field(default_factory=dict)


class ProtocolKeyStream:
    RATE_WINDOW = 8  # pipeline blocks over which the achieved key rate is averaged

    def __init__(
        self,
        params: LinkParams,
        block_size_bits: int,
        *,
        protocol_fraction: float | None = None,
        cpu_share: float = 0.5,
        pipeline_block_size: int | None = None,
        attack: AttackConfig = NO_ATTACK,
        seed: int | None = None,
        config: PipelineConfig = DEFAULT_CONFIG,
        max_consecutive_aborts: int = 20,
    ) -> None:
        if block_size_bits <= 0 or block_size_bits % 8:
            raise ValueError("block_size_bits must be a positive multiple of 8")
        self.block_size_bits = block_size_bits
        self.max_consecutive_aborts = max_consecutive_aborts
        self.producer = LinkBlockProducer(
            params, protocol_fraction=protocol_fraction, cpu_share=cpu_share, block_size=pipeline_block_size,
            attack=attack, seed=seed, config=config,
        )
        self._alice = bytearray()
        self._bob = bytearray()
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.RATE_WINDOW)  # (final bits, seconds)
        self.last_telemetry: dict[str, Any] = {}
        self.blocks_delivered = 0
        self.pipeline_blocks_aborted = 0

    # --- conditions -------------------------------------------------------------------------------------
    def set_params(self, params: LinkParams) -> None:
        self.producer.set_params(params)
        self._recent.clear()  # the achieved rate is re-measured at the new conditions

    def set_attack(self, attack: AttackConfig) -> None:
        self.producer.set_attack(attack)
        self._recent.clear()

    # --- rate -------------------------------------------------------------------------------------------
    def achieved_rate_bps(self) -> float | None:
        """Final key bits per second of link time over the recent pipeline blocks (None before the first)."""
        if not self._recent:
            return None
        bits = sum(b for b, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        return bits / seconds if seconds > 0 else 0.0

    def performance(self) -> LinkPerformance:
        model = performance(self.producer.params)
        rate = self.achieved_rate_bps()
        qber = self.last_telemetry.get("qber")
        return LinkPerformance(
            secret_key_rate_bps=model.secret_key_rate_bps if rate is None else rate,
            qber=model.qber if qber is None else float(qber),
            loss_db=model.loss_db,
            transmittance=model.transmittance,
            details={"model": model.details, "last_block": self.last_telemetry},
        )

    def seconds_per_block(self) -> float:
        rate = self.performance().secret_key_rate_bps
        return self.block_size_bits / rate if rate > 0 else float("inf")

    # --- blocks -----------------------------------------------------------------------------------------
    def _run_pipeline_block(self) -> None:
        result = self.producer.next_block()
        tel = result.telemetry
        self.last_telemetry = tel
        self._recent.append((int(tel.get("final_bits", 0)), float(tel["block_duration_s"])))
        if result.aborted:
            self.pipeline_blocks_aborted += 1
            return
        if result.alice_key != result.bob_key:  # the pipeline discards such blocks; never deliver them
            raise AssertionError("pipeline delivered different keys at the two ends")
        self._alice += result.alice_key
        self._bob += result.bob_key

    def next_block(self) -> StreamBlock:
        need = self.block_size_bits // 8
        aborted_before = self.pipeline_blocks_aborted
        consecutive_aborts = 0
        for _ in range(100_000):  # bound: 100k pipeline blocks is hours of CPU; stalls are caught far earlier
            if len(self._alice) >= need:
                break
            before = self.pipeline_blocks_aborted
            self._run_pipeline_block()
            consecutive_aborts = consecutive_aborts + 1 if self.pipeline_blocks_aborted > before else 0
            if consecutive_aborts >= self.max_consecutive_aborts:
                raise KeyStreamStalled(f"{consecutive_aborts} pipeline blocks in a row produced no key "
                                       f"({self.last_telemetry.get('abort_reason', '')})")
        else:
            raise KeyStreamStalled("pipeline blocks too small to fill a key block")
        key = bytes(self._alice[:need])
        if key != bytes(self._bob[:need]):
            raise AssertionError("key stream ends diverged")
        del self._alice[:need]
        del self._bob[:need]
        self.blocks_delivered += 1
        telemetry = dict(self.last_telemetry)
        telemetry.update(
            block=self.blocks_delivered, buffered_bits=len(self._alice) * 8,
            pipeline_blocks_aborted=self.pipeline_blocks_aborted - aborted_before,
            achieved_rate_bps=self.achieved_rate_bps(),
        )
        return StreamBlock(key, telemetry)
