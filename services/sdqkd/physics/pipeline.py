"""The per-block key generation pipeline: two parties, Alice and Bob, over a classical channel.

Each end holds only its own record from the quantum layer and runs the same steps:
sifting -> parameter estimation on a public random sample (abort above threshold) -> Cascade error correction
(every leaked parity counted) -> error verification (64-bit universal hash) -> Toeplitz privacy amplification to
the finite-key length, minus the key spent authenticating the classical messages (Wegman-Carter).

Roles: Alice leads (announces sample seeds, estimates, verification and PA seeds). In DV and E91 Bob corrects
towards Alice; in CV (reverse reconciliation) Alice corrects towards Bob's sign bits.

``run_block`` runs both ends in-process (Bob in a thread) over ``InProcessChannel``; the twin can run
``AliceSide.run`` and ``BobSide.run`` on two nodes with any ``ClassicalChannel``. ``run_statistical_block`` is the
fast mode: counts sampled from the same model, the same finite-key accounting, identical key from a shared seed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .analytical import LinkParams, h2
from .attacks import NO_ATTACK, AttackConfig
from .cascade import CascadeStats, cascade_correct, serve_cascade
from .channel import ClassicalChannel, InProcessChannel
from .estimation import chsh_from_bits, chsh_value, cv_estimate, e91_masks, sample_mask
from .finite_key import EPS_COR, EPS_SEC, decoy_estimate, decoy_key_length, finite_key_length, pa_overhead_bits
from .privacy import toeplitz_hash
from .quantum_cv import CvRecord, quadratures, simulate_cv
from .quantum_dv import (
    DECOY,
    SIGNAL,
    VACUUM,
    DvAliceRecord,
    DvBobRecord,
    class_probabilities,
    dead_time_keep_probability,
    expected_class_model,
    simulate_bb84_decoy,
)
from .quantum_e91 import CHSH_PAIRS, E91Record, coincidence_probability, expected_e91, simulate_e91
from .verification import TAG_BITS, verification_hash

DV_QBER_THRESHOLD = 0.11  # above this no decoy-BB84 / BBM92 key survives realistic error correction
CHSH_THRESHOLD = 2.0


@dataclass(frozen=True)
class PipelineConfig:
    pe_fraction: float = 0.1  # fraction of sifted key bits (E91) / symbols (CV) revealed for parameter estimation
    # Decoy BB84 takes its phase-error bound from the decoy states, so the signal-bit sample only sets Cascade's
    # block size and the abort check: a small one suffices.
    dv_pe_fraction: float = 0.03
    eps_sec: float = EPS_SEC
    eps_cor: float = EPS_COR
    auth_tag_bits: int = 64  # key consumed per authenticated classical message (Wegman-Carter one-time pad tag)
    cascade_passes: int | None = None  # None: Cascade picks (4 + large-block passes)
    cv_frames: int = 16  # CV reconciliation frames per block (each fails with the link's frame_error_rate)
    recv_timeout_s: float = 120.0


DEFAULT_CONFIG = PipelineConfig()


@dataclass
class PartyResult:
    key: bytes
    aborted: bool
    telemetry: dict[str, Any]


@dataclass
class BlockResult:
    alice_key: bytes
    bob_key: bytes
    aborted: bool
    telemetry: dict[str, Any] = field(default_factory=dict)


def _bits_to_bytes(bits: np.ndarray) -> bytes:
    return np.packbits(bits).tobytes()


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


class _Party:
    """What both ends share: the post-processing after sifting and estimation."""

    _ROLE: dict[str, Callable[[_Party, ClassicalChannel], PartyResult]]  # technology -> this end's protocol

    def __init__(self, params: LinkParams, record: Any, seed: int, config: PipelineConfig) -> None:
        self.params = params
        self.record = record
        self.rng = np.random.default_rng(seed)
        self.config = config
        self.telemetry: dict[str, Any] = {"technology": params.technology}
        self._cpu_start = time.thread_time()

    def run(self, channel: ClassicalChannel) -> PartyResult:
        cpu0 = self._cpu_start = time.thread_time()
        result = self._ROLE[self.params.technology](self, channel)
        result.telemetry["party_cpu_s"] = time.thread_time() - cpu0
        return result

    def _abort(self, reason: str) -> PartyResult:
        self.telemetry.update(aborted=True, abort_reason=reason, final_bits=0)
        return PartyResult(b"", True, self.telemetry)

    def _finish(
        self, channel: ClassicalChannel, bits: np.ndarray, leader: bool, corrector: bool, qber: float,
        length_for_leak: Callable[[int], int] | None,
    ) -> PartyResult:
        """Cascade, verification, privacy amplification. ``length_for_leak(leak_bits)`` (leader only) gives the
        secret length before authentication cost."""
        t0 = time.thread_time()
        self.telemetry["sifting_estimation_cpu_s"] = t0 - self._cpu_start
        if corrector:
            bits, stats = cascade_correct(bits, channel, qber, self.rng, self.config.cascade_passes)
        else:
            stats = serve_cascade(bits, channel)
        self.telemetry["cascade_cpu_s"] = time.thread_time() - t0
        self._record_cascade(stats, bits.size)
        if leader:
            seed = _seed(self.rng)
            channel.send({"t": "verify", "seed": seed, "tag": verification_hash(bits, seed)})
            if not channel.recv()["ok"]:
                channel.send({"t": "pa", "length": 0, "key_bits": 0, "seed": 0})
                return self._abort("verification failed")
            leak = stats.leaked_bits + TAG_BITS
            assert length_for_leak is not None  # the leader knows the estimates
            length = min(int(length_for_leak(leak)), bits.size)
            # Every message of this block plus the PA message costs an authentication tag.
            messages = channel.messages_sent + channel.messages_received + 1
            auth_bits = messages * self.config.auth_tag_bits
            key_bits = max(0, (length - auth_bits) // 8 * 8)
            seed = _seed(self.rng)
            channel.send({"t": "pa", "length": length if key_bits else 0, "key_bits": key_bits, "seed": seed})
        else:
            msg = channel.recv()
            ok = msg["tag"] == verification_hash(bits, msg["seed"])
            channel.send({"ok": ok})
            msg = channel.recv()
            if not ok:
                return self._abort("verification failed")
            length, key_bits, seed, auth_bits = msg["length"], msg["key_bits"], msg["seed"], None
            leak = stats.leaked_bits + TAG_BITS
        self.telemetry.update(leaked_bits=leak, pa_input_bits=int(bits.size), pa_output_bits=length)
        if auth_bits is not None:
            self.telemetry["auth_key_bits"] = auth_bits
        if key_bits <= 0:
            return self._abort("no secret key at this block size / error rate")
        t0 = time.thread_time()
        final = toeplitz_hash(bits, length, seed)[:key_bits]
        self.telemetry["privacy_amplification_cpu_s"] = time.thread_time() - t0
        self.telemetry.update(aborted=False, abort_reason="", final_bits=key_bits)
        return PartyResult(_bits_to_bytes(final), False, self.telemetry)

    def _record_cascade(self, stats: CascadeStats, n: int) -> None:
        self.telemetry.update(
            cascade_leaked_bits=stats.leaked_bits, cascade_errors_corrected=stats.errors_corrected,
            cascade_passes=stats.passes, cascade_rounds=stats.rounds, reconciled_bits=n,
            reconciliation_efficiency=stats.efficiency(n),
        )


def _lookup(recorded: np.ndarray, announced: np.ndarray) -> np.ndarray:
    """Positions in Alice's record of the pulses Bob announced. The record keeps only pulses that clicked (a
    simulation economy; real Alice indexes her full pulse log directly), so usually this is the identity."""
    if recorded.size == announced.size and np.array_equal(recorded, announced):
        return np.arange(announced.size)
    pos = np.searchsorted(recorded, announced)
    if announced.size and (pos.max() >= recorded.size or np.any(recorded[pos] != announced)):
        raise ValueError("Bob announced a pulse Alice has no record of")
    return pos


# ----------------------------------------------------------------------------------------------- DV: decoy BB84
def _alice_bb84(self: _Party, ch: ClassicalChannel) -> PartyResult:
    rec: DvAliceRecord = self.record
    msg = ch.recv()
    index = np.cumsum(msg["index_delta"].astype(np.int64))
    pos = _lookup(rec.pulse_index, index)
    basis, bit, cls = rec.basis[pos], rec.bit[pos], rec.intensity[pos]
    bob_basis = np.unpackbits(msg["basis"])[: index.size]
    ch.send({"t": "sift", "basis": np.packbits(basis), "intensity": cls})
    sifted = basis == bob_basis
    signal = np.flatnonzero(sifted & (cls == SIGNAL))
    decoys = np.flatnonzero(sifted & (cls != SIGNAL))
    msg = ch.recv()
    sample = sample_mask(signal.size, self.config.dv_pe_fraction, msg["seed"])
    revealed = np.unpackbits(msg["bits"])[: decoys.size + int(sample.sum())]
    decoy_err = revealed[: decoys.size] != bit[decoys]
    sample_err = revealed[decoys.size :] != bit[signal[sample]]
    k = int(sample.sum())
    qber = float(sample_err.mean()) if k else 0.5
    sample_basis = basis[signal[sample]]
    decoy_sel = cls[decoys] == DECOY
    est = decoy_estimate(
        self.params.mean_photon_number, self.params.decoy_mean_photon_number,
        tuple(int(c) for c in rec.pulses_per_class),
        tuple(int(np.sum(cls == c)) for c in (SIGNAL, DECOY, VACUUM)),
        int(decoy_sel.sum()), int(decoy_err[decoy_sel].sum()),
    )
    self.telemetry.update(
        raw_bits=int(index.size), sifted_bits=int(sifted.sum()), signal_sifted_bits=int(signal.size),
        pe_sample_bits=k, qber=qber,
        qber_z=float(sample_err[sample_basis == 0].mean()) if np.any(sample_basis == 0) else None,
        qber_x=float(sample_err[sample_basis == 1].mean()) if np.any(sample_basis == 1) else None,
        decoy=est.as_dict(),
    )
    abort = ""
    if qber > DV_QBER_THRESHOLD:
        abort = f"QBER {qber:.3f} above threshold {DV_QBER_THRESHOLD}"
    elif est.y1_lower <= 0 or est.e1_upper >= 0.5:
        abort = "decoy-state bounds leave no single-photon key"
    ch.send({"t": "estimate", "abort": abort, "qber": qber})
    if abort:
        return self._abort(abort)
    key = bit[signal[~sample]]
    return self._finish(ch, key, leader=True, corrector=False, qber=qber,
                        length_for_leak=lambda leak: decoy_key_length(key.size, est, leak, self.config.eps_sec,
                                                                      self.config.eps_cor))


def _bob_bb84(self: _Party, ch: ClassicalChannel) -> PartyResult:
    rec: DvBobRecord = self.record
    delta = np.diff(rec.pulse_index, prepend=0).astype(np.uint32)  # gaps between clicked pulses
    ch.send({"t": "clicks", "index_delta": delta, "basis": np.packbits(rec.basis)})
    msg = ch.recv()
    alice_basis = np.unpackbits(msg["basis"])[: rec.bit.size]
    cls = msg["intensity"]
    sifted = alice_basis == rec.basis
    signal = np.flatnonzero(sifted & (cls == SIGNAL))
    decoys = np.flatnonzero(sifted & (cls != SIGNAL))
    seed = _seed(self.rng)
    sample = sample_mask(signal.size, self.config.dv_pe_fraction, seed)
    ch.send({"t": "reveal", "seed": seed,
             "bits": np.packbits(np.r_[rec.bit[decoys], rec.bit[signal[sample]]])})
    est = ch.recv()
    if est["abort"]:
        return self._abort(est["abort"])
    key = rec.bit[signal[~sample]]
    return self._finish(ch, key, leader=False, corrector=True, qber=est["qber"], length_for_leak=None)


# ----------------------------------------------------------------------------------------------------- E91
def _alice_e91(self: _Party, ch: ClassicalChannel) -> PartyResult:
    rec: E91Record = self.record
    msg = ch.recv()
    index = np.cumsum(msg["index_delta"].astype(np.int64))
    pos = _lookup(rec.pulse_index, index)
    a_set, bit = rec.setting[pos], rec.bit[pos]
    b_set = msg["setting"]
    ch.send({"t": "sift", "setting": a_set})
    key_mask, chsh_mask = e91_masks(a_set, b_set)
    key_idx, chsh_idx = np.flatnonzero(key_mask), np.flatnonzero(chsh_mask)
    msg = ch.recv()
    sample = sample_mask(key_idx.size, self.config.pe_fraction, msg["seed"])
    revealed = np.unpackbits(msg["bits"])[: chsh_idx.size + int(sample.sum())]
    s_value = chsh_from_bits(a_set[chsh_idx], b_set[chsh_idx], bit[chsh_idx], revealed[: chsh_idx.size])
    sample_err = revealed[chsh_idx.size :] != bit[key_idx[sample]]
    k = int(sample.sum())
    qber = float(sample_err.mean()) if k else 0.5
    self.telemetry.update(raw_bits=int(index.size), sifted_bits=int(key_idx.size), pe_sample_bits=k,
                          qber=qber, chsh_s=s_value, chsh_bits=int(chsh_idx.size))
    abort = ""
    if s_value <= CHSH_THRESHOLD:
        abort = f"CHSH S {s_value:.3f} <= 2: no entanglement"
    elif qber > DV_QBER_THRESHOLD:
        abort = f"QBER {qber:.3f} above threshold {DV_QBER_THRESHOLD}"
    ch.send({"t": "estimate", "abort": abort, "qber": qber})
    if abort:
        return self._abort(abort)
    key = bit[key_idx[~sample]]
    return self._finish(ch, key, leader=True, corrector=False, qber=qber,
                        length_for_leak=lambda leak: finite_key_length(key.size, k, qber, leak,
                                                                       self.config.eps_sec, self.config.eps_cor))


def _bob_e91(self: _Party, ch: ClassicalChannel) -> PartyResult:
    rec: E91Record = self.record
    ch.send({"t": "clicks", "index_delta": np.diff(rec.pulse_index, prepend=0).astype(np.uint32),
             "setting": rec.setting})
    a_set = ch.recv()["setting"]
    key_mask, chsh_mask = e91_masks(a_set, rec.setting)
    key_idx, chsh_idx = np.flatnonzero(key_mask), np.flatnonzero(chsh_mask)
    seed = _seed(self.rng)
    sample = sample_mask(key_idx.size, self.config.pe_fraction, seed)
    ch.send({"t": "reveal", "seed": seed, "bits": np.packbits(np.r_[rec.bit[chsh_idx], rec.bit[key_idx[sample]]])})
    est = ch.recv()
    if est["abort"]:
        return self._abort(est["abort"])
    return self._finish(ch, rec.bit[key_idx[~sample]], leader=False, corrector=True, qber=est["qber"],
                        length_for_leak=None)


# -------------------------------------------------------------------------------------------------- CV-QKD
def _cv_key_symbols(n: int, frames: int, dropped: np.ndarray) -> np.ndarray:
    frame_of = np.arange(n) * frames // max(n, 1)
    return ~np.isin(frame_of, dropped)


def _alice_cv(self: _Party, ch: ClassicalChannel) -> PartyResult:
    rec: CvRecord = self.record
    msg = ch.recv()
    usable = _cv_key_symbols(rec.n_symbols, self.config.cv_frames, msg["dropped"])
    idx = np.flatnonzero(usable)
    sample = sample_mask(idx.size, self.config.pe_fraction, msg["seed"])
    x_sample, y_sample = rec.values[idx[sample]], msg["y"]
    est = cv_estimate(x_sample, y_sample, self.params)
    qber = float(np.mean(np.signbit(x_sample) != np.signbit(y_sample)))
    n_key = int(idx.size - sample.sum())
    self.telemetry.update(
        raw_bits=int(rec.n_symbols * quadratures(self.params)), symbols=rec.n_symbols, key_symbols=n_key,
        pe_sample_symbols=int(sample.sum()), frame_error_rate=float(msg["dropped"].size / self.config.cv_frames),
        qber=qber, **{k: est[k] for k in ("transmittance", "excess_noise_snu", "v_mod_snu", "snr", "I_AB",
                                              "chi_BE", "transmittance_sigma", "excess_noise_sigma")},
        bits_per_symbol=est["K"], model_reconciliation_efficiency=self.params.reconciliation_efficiency,
    )
    abort = "" if est["K"] > 0 else "excess noise too high: no secret key (K <= 0)"
    ch.send({"t": "estimate", "abort": abort, "qber": qber})
    if abort:
        return self._abort(abort)
    bits = np.signbit(rec.values[idx[~sample]]).astype(np.uint8).ravel()

    def length(leak: int) -> int:
        # GG02 accounting at the estimated T and xi: beta * I_AB - chi_BE per symbol (the reconciliation's
        # leakage is the (1 - beta) share of I_AB, not Cascade's `leak`; see docs/physics.md), minus the
        # verification tag and the PA overhead.
        return max(math.floor(n_key * est["K"] - TAG_BITS - pa_overhead_bits(self.config.eps_sec,
                                                                             self.config.eps_cor)), 0)

    return self._finish(ch, bits, leader=True, corrector=True, qber=qber, length_for_leak=length)


def _bob_cv(self: _Party, ch: ClassicalChannel) -> PartyResult:
    rec: CvRecord = self.record
    frames = self.config.cv_frames
    dropped = np.flatnonzero(self.rng.random(frames) < self.params.frame_error_rate).astype(np.int64)
    usable = _cv_key_symbols(rec.n_symbols, frames, dropped)
    idx = np.flatnonzero(usable)
    seed = _seed(self.rng)
    sample = sample_mask(idx.size, self.config.pe_fraction, seed)
    ch.send({"t": "reveal", "dropped": dropped, "seed": seed, "y": rec.values[idx[sample]]})
    est = ch.recv()
    if est["abort"]:
        return self._abort(est["abort"])
    bits = np.signbit(rec.values[idx[~sample]]).astype(np.uint8).ravel()
    return self._finish(ch, bits, leader=False, corrector=False, qber=est["qber"], length_for_leak=None)


_ALICE = {"dv-bb84-decoy": _alice_bb84, "e91": _alice_e91, "cv-qkd": _alice_cv}
_BOB = {"dv-bb84-decoy": _bob_bb84, "e91": _bob_e91, "cv-qkd": _bob_cv}


class AliceSide(_Party):
    """Alice's end of a link for one block: her quantum-layer record only."""

    _ROLE = _ALICE


class BobSide(_Party):
    """Bob's end of a link for one block: his quantum-layer record only."""

    _ROLE = _BOB


def simulate_quantum_layer(
    params: LinkParams, attack: AttackConfig, block_size: int, rng: np.random.Generator
) -> tuple[Any, Any]:
    """The two ends' records for one block (block_size = pulses, pairs or symbols)."""
    if params.technology == "dv-bb84-decoy":
        return simulate_bb84_decoy(params, attack, block_size, rng)
    if params.technology == "e91":
        return simulate_e91(params, attack, block_size, rng)
    return simulate_cv(params, attack, block_size, rng)


def block_duration_s(params: LinkParams, block_size: int) -> float:
    rate = params.symbol_rate_hz if params.technology == "cv-qkd" else params.pulse_rate_hz
    return block_size / rate


def block_size_for(params: LinkParams, sifted_bits: int) -> int:
    """Pulses / pairs / symbols per block that give about ``sifted_bits`` key-candidate bits."""
    if params.technology == "dv-bb84-decoy":
        gains = expected_class_model(params, NO_ATTACK)["gain"]
        probs = class_probabilities(params)
        dead = 1.0 / (1.0 + float(gains @ probs) * params.pulse_rate_hz * params.dead_time_s)
        per_pulse = gains[SIGNAL] * probs[SIGNAL] * params.sift_factor * dead
        return max(1000, math.ceil(sifted_bits / max(per_pulse, 1e-15)))
    if params.technology == "e91":
        return max(1000, math.ceil(sifted_bits / max(coincidence_probability(params) * 2 / 9, 1e-15)))
    return max(1000, math.ceil(sifted_bits / quadratures(params)))


def _merge_telemetry(params: LinkParams, block_size: int, alice: PartyResult, bob: PartyResult,
                     extra: dict[str, Any]) -> dict[str, Any]:
    tel = dict(alice.telemetry)
    tel["alice_cpu_s"] = alice.telemetry.get("party_cpu_s", 0.0)
    tel["bob_cpu_s"] = bob.telemetry.get("party_cpu_s", 0.0)
    tel.pop("party_cpu_s", None)
    for stage in ("sifting_estimation_cpu_s", "cascade_cpu_s", "privacy_amplification_cpu_s"):
        if stage in tel or stage in bob.telemetry:
            tel[stage] = {"alice": tel.get(stage, 0.0), "bob": bob.telemetry.get(stage, 0.0)}
    for key in ("cascade_leaked_bits", "cascade_rounds", "reconciliation_efficiency", "cascade_errors_corrected"):
        if key not in tel and key in bob.telemetry:
            tel[key] = bob.telemetry[key]
    duration = block_duration_s(params, block_size)
    tel.update(extra)
    tel.update(block_size=block_size, block_duration_s=duration,
               secret_key_rate_bps=tel.get("final_bits", 0) / duration if duration else 0.0,
               transmittance_model=params.channel_transmittance, loss_db=params.loss_db)
    return tel


def run_block(
    params: LinkParams,
    attack: AttackConfig = NO_ATTACK,
    *,
    block_size: int | None = None,
    seed: int | None = None,
    config: PipelineConfig = DEFAULT_CONFIG,
) -> BlockResult:
    """Protocol mode: simulate one block and run both ends over an in-process channel."""
    started = time.perf_counter()
    cpu0 = time.process_time()
    seq = np.random.SeedSequence(seed if seed is not None else int.from_bytes(os.urandom(16), "big"))
    quantum_seed, alice_seed, bob_seed = seq.spawn(3)
    size = block_size or block_size_for(params, 200_000)
    alice_rec, bob_rec = simulate_quantum_layer(params, attack, size, np.random.default_rng(quantum_seed))
    quantum_cpu = time.process_time() - cpu0
    a_chan, b_chan = InProcessChannel.pair(config.recv_timeout_s)
    alice = AliceSide(params, alice_rec, alice_seed.generate_state(1)[0], config)
    bob = BobSide(params, bob_rec, bob_seed.generate_state(1)[0], config)
    bob_out: dict[str, Any] = {}

    def bob_main() -> None:
        try:
            bob_out["result"] = bob.run(b_chan)
        except BaseException as exc:  # report to the caller's thread
            bob_out["error"] = exc
            b_chan.close()

    thread = threading.Thread(target=bob_main, name="qkd-bob", daemon=True)
    thread.start()
    try:
        alice_result = alice.run(a_chan)
    except BaseException:
        a_chan.close()
        thread.join(config.recv_timeout_s)
        raise
    thread.join(config.recv_timeout_s)
    if "error" in bob_out:
        raise bob_out["error"]
    bob_result: PartyResult = bob_out["result"]
    aborted = alice_result.aborted or bob_result.aborted or alice_result.key != bob_result.key
    extra = {
        "mode": "protocol", "aborted": aborted,
        "classical_bytes": a_chan.bytes_sent + b_chan.bytes_sent,
        "classical_messages": a_chan.messages_sent + b_chan.messages_sent,
        "block_latency_s": time.perf_counter() - started,
        "quantum_layer_cpu_s": quantum_cpu, "attack": attack.to_mapping(),
    }
    if alice_result.key != bob_result.key and not (alice_result.aborted or bob_result.aborted):
        extra.update(abort_reason="final keys differ", final_bits=0)
    if aborted:
        extra["final_bits"] = 0
        return BlockResult(b"", b"", True, _merge_telemetry(params, size, alice_result, bob_result, extra))
    return BlockResult(alice_result.key, bob_result.key, False,
                       _merge_telemetry(params, size, alice_result, bob_result, extra))


# ----------------------------------------------------------------------------------------- statistical mode
# Classical messages of a typical protocol-mode block (sifting, estimation, ~90 Cascade round trips,
# verification, PA), charged for authentication like a real block.
STATISTICAL_MESSAGES = 200


def statistical_key(seed: int, key_bits: int) -> bytes:
    """The key both ends of a statistical-mode block derive from the block's shared seed (``key_bits // 8`` bytes).
    A separate stream from the one that sampled the counts, so an end that only knows the seed and the length
    (the twin's far end) derives the same bytes without re-running the sampling."""
    if key_bits <= 0:
        return b""
    return np.random.default_rng(np.random.SeedSequence([seed, 0x6B6579])).bytes(key_bits // 8)


def run_statistical_block(
    params: LinkParams,
    attack: AttackConfig = NO_ATTACK,
    *,
    block_size: int | None = None,
    seed: int | None = None,
    config: PipelineConfig = DEFAULT_CONFIG,
    ec_efficiency: float | None = None,
) -> BlockResult:
    """Statistical mode: detection and error counts sampled from the same physical model, the same estimators and
    finite-key accounting (error correction leaking f * n * H2(QBER), f = the link's ec_efficiency unless given),
    and identical key bytes at both ends from a per-block shared seed."""
    started = time.perf_counter()
    if seed is None:
        seed = int.from_bytes(os.urandom(16), "big")
    rng = np.random.default_rng(seed)
    size = block_size or block_size_for(params, 200_000)
    f = ec_efficiency or params.ec_efficiency
    pe = config.pe_fraction
    tel: dict[str, Any] = {"technology": params.technology, "mode": "statistical", "attack": attack.to_mapping()}
    length = 0
    abort = ""
    if params.technology == "dv-bb84-decoy":
        model = expected_class_model(params, attack)
        per_class = rng.multinomial(size, class_probabilities(params))
        clicks = rng.binomial(per_class, model["gain"])
        keep = dead_time_keep_probability(params, int(clicks.sum()), size)
        clicks = rng.binomial(clicks, keep)
        sifted = rng.binomial(clicks, params.sift_factor)
        errors = rng.binomial(sifted, model["qber"])
        n_signal = int(sifted[SIGNAL])
        k = min(n_signal, max(1, math.ceil(config.dv_pe_fraction * n_signal)))
        sample_errors = int(rng.hypergeometric(errors[SIGNAL], n_signal - errors[SIGNAL], k)) if k else 0
        key_errors = int(errors[SIGNAL]) - sample_errors
        n_key = n_signal - k
        qber = sample_errors / k if k else 0.5
        est = decoy_estimate(params.mean_photon_number, params.decoy_mean_photon_number,
                             tuple(int(c) for c in per_class), tuple(int(c) for c in clicks),
                             int(sifted[DECOY]), int(errors[DECOY]))
        leak = math.ceil(f * n_key * h2(key_errors / n_key)) + TAG_BITS if n_key else 0
        tel.update(raw_bits=int(clicks.sum()), sifted_bits=int(sifted.sum()), signal_sifted_bits=n_signal,
                   pe_sample_bits=k, qber=qber, decoy=est.as_dict(), leaked_bits=leak)
        if qber > DV_QBER_THRESHOLD:
            abort = f"QBER {qber:.3f} above threshold {DV_QBER_THRESHOLD}"
        else:
            length = decoy_key_length(n_key, est, leak, config.eps_sec, config.eps_cor)
    elif params.technology == "e91":
        e = expected_e91(params, attack)
        clicks = int(rng.binomial(size, coincidence_probability(params)))
        settings = rng.multinomial(clicks, np.full(9, 1 / 9)).reshape(3, 3)
        n_sift = int(settings[1, 0] + settings[2, 1])
        same, total = {}, {}
        for a, b, _ in CHSH_PAIRS:
            total[(a, b)] = int(settings[a, b])
            # P(equal outcomes) = (1 + E) / 2 with E = S-weighted correlation of the model at these settings.
            corr = params.visibility * math.cos(2 * (float([0, math.pi / 8, math.pi / 4][a])
                                                     - float([math.pi / 8, math.pi / 4, 3 * math.pi / 8][b])))
            corr *= 1 - attack.intercept_resend_fraction / 2
            same[(a, b)] = int(rng.binomial(total[(a, b)], (1 + corr) / 2))
        s_value = chsh_value(same, total)
        k = min(n_sift, max(1, math.ceil(pe * n_sift)))
        n_key = n_sift - k
        sample_errors = int(rng.binomial(k, e["qber"]))
        key_errors = int(rng.binomial(n_key, e["qber"]))
        qber = sample_errors / k if k else 0.5
        leak = math.ceil(f * n_key * h2(key_errors / n_key)) + TAG_BITS if n_key else 0
        tel.update(raw_bits=clicks, sifted_bits=n_sift, pe_sample_bits=k, qber=qber, chsh_s=s_value,
                   leaked_bits=leak)
        if s_value <= CHSH_THRESHOLD:
            abort = f"CHSH S {s_value:.3f} <= 2: no entanglement"
        elif qber > DV_QBER_THRESHOLD:
            abort = f"QBER {qber:.3f} above threshold {DV_QBER_THRESHOLD}"
        else:
            length = finite_key_length(n_key, k, qber, leak, config.eps_sec, config.eps_cor)
    else:
        dropped = int(rng.binomial(config.cv_frames, params.frame_error_rate))
        usable = size * (config.cv_frames - dropped) // config.cv_frames
        k = min(usable, max(1, math.ceil(pe * usable)))
        # The revealed sample is small: simulate it physically and use the protocol's estimator.
        alice_rec, bob_rec = simulate_cv(params, attack, k, rng)
        est = cv_estimate(alice_rec.values, bob_rec.values, params)
        n_key = usable - k
        tel.update(raw_bits=size * quadratures(params), symbols=size, key_symbols=n_key, pe_sample_symbols=k,
                   frame_error_rate=dropped / config.cv_frames, bits_per_symbol=est["K"],
                   **{key: est[key] for key in ("transmittance", "excess_noise_snu", "v_mod_snu", "snr", "I_AB",
                                                  "chi_BE")})
        if est["K"] <= 0:
            abort = "excess noise too high: no secret key (K <= 0)"
        else:
            length = max(math.floor(n_key * est["K"] - TAG_BITS - pa_overhead_bits(config.eps_sec,
                                                                                   config.eps_cor)), 0)
    auth_bits = STATISTICAL_MESSAGES * config.auth_tag_bits
    key_bits = max(0, (length - auth_bits) // 8 * 8) if not abort else 0
    if not abort and key_bits == 0:
        abort = "no secret key at this block size / error rate"
    key = statistical_key(seed, key_bits)
    duration = block_duration_s(params, size)
    if params.technology == "cv-qkd":
        tel["model_reconciliation_efficiency"] = params.reconciliation_efficiency
    else:
        tel["reconciliation_efficiency"] = f  # the leak is modelled as f n H2(e), so f is what telemetry reports
    tel.update(aborted=bool(abort), abort_reason=abort, pa_output_bits=length, auth_key_bits=auth_bits,
               final_bits=key_bits, block_size=size, block_duration_s=duration,
               secret_key_rate_bps=key_bits / duration, block_latency_s=time.perf_counter() - started,
               loss_db=params.loss_db, transmittance_model=params.channel_transmittance)
    return BlockResult(key, key, bool(abort), tel)


class LinkBlockProducer:
    """Key blocks of one link, as the twin consumes them: ``protocol`` mode on a sampled fraction of blocks and
    ``statistical`` mode on the rest; telemetry says which. Attacks and physics can change between blocks.

    ``protocol_fraction=None`` (auto) runs protocol mode on as many blocks as the CPU sustains in real time: with
    c_p and c_s the measured CPU seconds of a protocol and a statistical block and d the block's duration at the
    link's rate, the fraction is min(1, (cpu_share * d - c_s) / (c_p - c_s)). A slow link is then simulated in
    full on every block, a 100 Mbit/s link on a sample.
    """

    def __init__(
        self,
        params: LinkParams,
        *,
        protocol_fraction: float | None = 1.0,
        cpu_share: float = 0.5,
        block_size: int | None = None,
        attack: AttackConfig = NO_ATTACK,
        seed: int | None = None,
        config: PipelineConfig = DEFAULT_CONFIG,
    ) -> None:
        if protocol_fraction is not None and not 0.0 <= protocol_fraction <= 1.0:
            raise ValueError("protocol_fraction must be in [0, 1] or None (auto)")
        self.protocol_fraction = protocol_fraction
        self.cpu_share = cpu_share
        self._block_size = block_size
        self.attack = attack
        self.config = config
        self._seeds = np.random.SeedSequence(seed)
        self._choice = np.random.default_rng(self._seeds.spawn(1)[0])
        self._cpu = {"protocol": 0.0, "statistical": 0.0}  # EWMA of CPU seconds per block
        self.blocks = 0
        self.set_params(params)

    def set_params(self, params: LinkParams) -> None:
        self.params = params
        self.block_size = self._block_size or block_size_for(params, 200_000)

    def set_attack(self, attack: AttackConfig) -> None:
        self.attack = attack

    def current_protocol_fraction(self) -> float:
        if self.protocol_fraction is not None:
            return self.protocol_fraction
        c_p, c_s = self._cpu["protocol"], self._cpu["statistical"]
        if c_p == 0.0:
            return 1.0  # measure a protocol block first
        budget = self.cpu_share * block_duration_s(self.params, self.block_size)
        if c_p <= budget:
            return 1.0
        return max(0.0, min(1.0, (budget - c_s) / max(c_p - c_s, 1e-12)))

    def next_block(self) -> BlockResult:
        block_seed = int(self._seeds.spawn(1)[0].generate_state(1)[0])
        self.blocks += 1
        fraction = self.current_protocol_fraction()
        mode = "protocol" if self._choice.random() < fraction else "statistical"
        run = run_block if mode == "protocol" else run_statistical_block
        cpu0 = time.process_time()
        result = run(self.params, self.attack, block_size=self.block_size, seed=block_seed, config=self.config)
        cpu = time.process_time() - cpu0
        self._cpu[mode] = cpu if self._cpu[mode] == 0.0 else 0.8 * self._cpu[mode] + 0.2 * cpu
        result.telemetry.update(protocol_fraction=fraction, block=self.blocks, block_cpu_s=cpu)
        return result
