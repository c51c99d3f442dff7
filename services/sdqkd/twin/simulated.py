"""Key from the protocol simulation: ``protocol`` and ``statistical`` block producers, and each node's side of them.

A link in mode ``protocol`` or ``statistical`` is driven by its first end (Alice, ``endpoints[0]``), which runs
a ``SimulatedBlockProducer``:

- **Post-processing blocks.** The engine runs blocks of ``postprocessing_block_bits`` sifted bits ahead of the
  store, in link time, up to a small buffer. A protocol block runs Alice in a worker process on her node and Bob
  in a worker process on his node (``parties.py``), with every classical message going over the node-to-node
  HTTPS interface. A statistical block samples the counts from the same model, applies the same finite-key
  accounting, and gives both ends the key of a per-block shared seed. In mode ``protocol``, a block is a
  protocol block with probability ``protocol_fraction``; with no fraction given, as often as the twin's protocol
  CPU budget allows (a token bucket of CPU seconds), so a slow link is simulated in full and a fast one on a
  sample. Every block's telemetry says which mode made it.
- **Each end keeps its own key.** Each end appends its own final key to its ``EndKeys`` buffer, and only a
  block that both ends finished with keys of equal length (and, when both live in this process, equal bytes)
  is committed; otherwise it is discarded at both ends. The link runner cuts store blocks from both buffers at
  the same offset. A remote end gets a reference (epoch, offset, size), never key bytes, and it answers 409 if
  its buffer does not match (for example after a restart). Both ends then start a new epoch.
- **Pacing.** The link runner delivers store blocks at the rate the simulated link achieves (final bits per
  second of link time over the recent blocks, times the time scale). The simulation may run ahead of that by
  the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from services.sdqkd.physics.analytical import LinkParams, LinkPerformance, performance
from services.sdqkd.physics.attacks import NO_ATTACK, AttackConfig
from services.sdqkd.physics.pipeline import (
    PartyResult,
    PipelineConfig,
    _merge_telemetry,
    block_duration_s,
    block_size_for,
    run_statistical_block,
    statistical_key,
)

from .errors import BadRequest, TwinError
from .parties import NodeSessions, PartyOutcome, PartyPool, PartySession, wait_event
from .producer import KeyBlock
from .qkdworker import jsonable
from .topology import LinkSpec

log = logging.getLogger("twin.qkd")

# The twin's pipeline settings: a peer that stops answering ends the block within seconds, not minutes.
TWIN_PIPELINE_CONFIG = PipelineConfig(recv_timeout_s=20.0)
PROTOCOL_BLOCK_TIMEOUT_S = 60.0
HISTORY_BLOCKS = 256
# Telemetry of a block that the twin keeps and exports (the pipeline reports more; these are what operators and
# researchers watch, as a CV device such as LuxQuanta's NOVA LQ reports them: excess noise, transmittance, key rate).
BLOCK_FIELDS = (
    "block", "mode", "technology", "aborted", "abort_reason", "raw_bits", "sifted_bits", "signal_sifted_bits",
    "pe_sample_bits", "final_bits", "qber", "qber_z", "qber_x", "decoy", "chsh_s", "chsh_bits", "transmittance",
    "excess_noise_snu", "v_mod_snu", "snr", "bits_per_symbol", "frame_error_rate", "reconciliation_efficiency",
    "model_reconciliation_efficiency", "cascade_leaked_bits", "cascade_rounds", "leaked_bits", "auth_key_bits",
    "secret_key_rate_bps", "block_latency_s", "block_duration_s", "block_size", "classical_messages",
    "classical_bytes", "cpu_s", "attack", "protocol_fallback", "key_kept",
)


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(16), "big")


class EndKeyConflict(TwinError):
    """The two ends' key buffers disagree about the offset (a restart, a lost commit): start a new epoch."""

    status = 409


class EndKeys:
    """One end's distilled key of one link, in the order the link's driver committed it, not yet in the store."""

    MAX_PENDING = 8

    def __init__(self) -> None:
        self.epoch = ""
        self.appended = 0  # bytes appended in this epoch
        self.cut_at = 0  # next offset the driving end cuts (it cuts in order)
        self.base = 0  # offset of buffer[0]; everything before it has been cut
        self.buffer = bytearray()
        self._cut_out_of_order: dict[int, int] = {}  # offset -> size, cut ahead of the front
        self.pending: dict[str, bytes] = {}  # protocol blocks finished but not yet committed, by session

    def new_epoch(self, epoch: str | None = None) -> str:
        self.epoch = epoch or uuid.uuid4().hex
        self.appended = self.cut_at = self.base = 0
        self.buffer.clear()
        self._cut_out_of_order.clear()
        return self.epoch

    @property
    def buffered(self) -> int:
        return self.appended - self.cut_at

    def append(self, epoch: str, offset: int, key: bytes) -> None:
        if epoch != self.epoch:
            if offset != 0:
                raise EndKeyConflict("unknown key epoch", [{"epoch": epoch, "offset": offset}])
            self.new_epoch(epoch)
        if offset != self.appended:
            raise EndKeyConflict("key offset mismatch", [{"expected": self.appended, "got": offset}])
        self.buffer += key
        self.appended += len(key)

    def cut(self, epoch: str, offset: int, nbytes: int) -> bytes:
        """The key at [offset, offset + nbytes). The far end may be asked out of order (the link runner writes
        each batch to the non-owning end first), so cuts ahead of the front are remembered until it reaches them."""
        if (epoch != self.epoch or offset < self.base or offset + nbytes > self.appended
                or offset in self._cut_out_of_order):
            raise EndKeyConflict("key buffer mismatch", [{"epoch": epoch, "offset": offset, "nbytes": nbytes}])
        start = offset - self.base
        key = bytes(self.buffer[start : start + nbytes])
        self._cut_out_of_order[offset] = nbytes
        while self.base in self._cut_out_of_order:
            size = self._cut_out_of_order.pop(self.base)
            del self.buffer[:size]
            self.base += size
        self.cut_at = max(self.cut_at, offset + nbytes)
        return key

    def hold(self, session: str, key: bytes) -> None:
        self.pending[session] = key
        while len(self.pending) > self.MAX_PENDING:  # a driver that died never commits: forget the oldest
            self.pending.pop(next(iter(self.pending)))


class NodePeers(Protocol):
    async def post(self, node_id: str, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def post_bytes(self, node_id: str, path: str, params: dict[str, str], data: bytes) -> None: ...


class QkdNode:
    """One node's side of the simulated links: its protocol sessions, its key buffers, and the node-to-node
    handlers the other end of a link calls (``/twin/v1/qkd/*``)."""

    def __init__(self, node_id: str, links: dict[str, LinkSpec], pool: PartyPool, peers: NodePeers) -> None:
        self.id = node_id
        self.links = {lid: spec for lid, spec in links.items() if node_id in spec.endpoints}
        self.pool = pool
        self.peers = peers
        self.sessions = NodeSessions(node_id)
        self.keys: dict[str, EndKeys] = {lid: EndKeys() for lid in self.links}
        self.counters = {"protocol_blocks_served": 0, "classical_messages_received": 0,
                         "classical_bytes_received": 0, "busy_refusals": 0}

    def _link_with(self, link_id: str, sender: str) -> LinkSpec:
        spec = self.links.get(link_id)
        if spec is None or sender not in spec.endpoints or sender == self.id:
            raise BadRequest("not a link between these nodes", [{"link": link_id}])
        return spec

    # -- Bob's end of a protocol block -------------------------------------------------------------------
    async def open(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        spec = self._link_with(str(body.get("link")), sender)
        session = PartySession(str(body["session"]), self.id, sender, spec.id, "bob", self.peers)
        worker = self.pool.try_acquire(session)
        if worker is None:
            self.counters["busy_refusals"] += 1
            return {"busy": True}
        session.worker = worker
        self.sessions.add(session)
        job = {k: body[k] for k in ("params", "attack", "block_size", "quantum_seed", "config")}
        await session.run({**job, "party_seed": str(_fresh_seed())})  # Bob's own randomness
        return {"busy": False}

    async def message(self, sender: str, session_id: str, seq: int, data: bytes) -> None:
        session = self.sessions.get(session_id)
        if session.peer != sender:
            raise BadRequest("not your session")
        self.counters["classical_messages_received"] += 1
        self.counters["classical_bytes_received"] += len(data)
        await session.incoming(seq, data)

    async def result(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions.get(str(body.get("session")))
        if session.peer != sender or session.role != "bob":
            raise BadRequest("not your session")
        try:
            outcome = await session.result(PROTOCOL_BLOCK_TIMEOUT_S)
        finally:
            self.sessions.remove(session.id)
        self.counters["protocol_blocks_served"] += 1
        if outcome.ok and not outcome.aborted and outcome.key:
            self.keys[session.link].hold(session.id, outcome.key)
        return {"ok": outcome.ok, "aborted": outcome.aborted, "final_bits": len(outcome.key) * 8,
                "telemetry": outcome.telemetry, "error": outcome.error}

    async def cancel(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        with contextlib.suppress(TwinError):
            session = self.sessions.get(str(body.get("session")))
            if session.peer == sender:
                await session.cancel(str(body.get("reason", "cancelled by the peer")))
        return {"ok": True}

    # -- key buffers ----------------------------------------------------------------------------------------
    def commit(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        """Append committed blocks: a protocol block's held key, or a statistical block's key from its seed."""
        spec = self._link_with(str(body.get("link")), sender)
        keys = self.keys[spec.id]
        offset = int(body["offset"])
        for item in body.get("items", []):
            if "session" in item:
                key = keys.pending.pop(str(item["session"]), None)
                if key is None:
                    raise EndKeyConflict("no held key for that session", [{"session": item["session"]}])
            else:
                key = statistical_key(int(item["seed"]), int(item["bits"]))
            keys.append(str(body["epoch"]), offset, key)
            offset += len(key)
        return {"ok": True, "appended": keys.appended}

    def discard(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        spec = self._link_with(str(body.get("link")), sender)
        self.keys[spec.id].pending.pop(str(body.get("session")), None)
        return {"ok": True}

    def cut(self, link_id: str, epoch: str, offset: int, nbytes: int) -> bytes:
        return self.keys[link_id].cut(epoch, offset, nbytes)


class PeerEnd:
    """How Alice's driver reaches the other end: always over HTTP for the protocol; commits and cuts go to the
    other end's ``QkdNode`` directly when it lives in this process (as the all-in-one twin writes both stores)."""

    def __init__(self, link_id: str, node: str, peer: str, peers: NodePeers, local: QkdNode | None) -> None:
        self.link_id = link_id
        self.node = node
        self.peer = peer
        self.peers = peers
        self.local = local

    async def open(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.peers.post(self.peer, "/twin/v1/qkd/open", body)

    async def result(self, session: str) -> dict[str, Any]:
        return await self.peers.post(self.peer, "/twin/v1/qkd/result", {"session": session})

    async def cancel(self, session: str, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.peers.post(self.peer, "/twin/v1/qkd/cancel", {"session": session, "reason": reason})

    async def commit(self, epoch: str, offset: int, items: list[dict[str, Any]]) -> None:
        body = {"link": self.link_id, "epoch": epoch, "offset": offset, "items": items}
        if self.local is not None:
            self.local.commit(self.node, body)
        else:
            await self.peers.post(self.peer, "/twin/v1/qkd/commit", body)

    async def discard(self, session: str) -> None:
        body = {"link": self.link_id, "session": session}
        if self.local is not None:
            self.local.discard(self.node, body)
        else:
            with contextlib.suppress(Exception):
                await self.peers.post(self.peer, "/twin/v1/qkd/discard", body)


class SimulatedBlockProducer:
    """The ``BlockProducer`` of a link in mode ``protocol`` or ``statistical``; runs at the link's first end."""

    RATE_WINDOW = 8  # post-processing blocks over which the achieved rate is averaged
    AHEAD_S = 0.5  # the simulation may run this far ahead of wall-clock link time
    MONITOR_S = 0.5  # with a full store, one telemetry block this often (its key discarded)

    def __init__(
        self,
        spec: LinkSpec,
        *,
        node: QkdNode,
        peer: PeerEnd,
        time_scale: float = 1.0,
        cpu_share: float = 0.25,
        is_up: Callable[[], bool] = lambda: True,
        config: PipelineConfig = TWIN_PIPELINE_CONFIG,
    ) -> None:
        if spec.mode not in ("protocol", "statistical"):
            raise ValueError("SimulatedBlockProducer runs links in mode protocol or statistical")
        self.spec = spec
        self.link_id = spec.id
        self.mode = spec.mode
        self.configured_fraction = spec.protocol_fraction if spec.mode == "protocol" else 0.0
        self.block_size_bits = spec.block_size_bits
        self.node = node
        self.peer = peer
        self.keys = node.keys[spec.id]
        self.keys.new_epoch()
        self.time_scale = time_scale
        self.cpu_share = cpu_share
        self.is_up = is_up
        self.config = config
        self.attack: AttackConfig = NO_ATTACK
        self.on_key: Callable[[], None] = lambda: None  # the link runner's wake-up
        self._choice = np.random.default_rng()
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.RATE_WINDOW)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_BLOCKS)
        self.last_block: dict[str, Any] = {}
        self.last_by_mode: dict[str, dict[str, Any]] = {}
        self.blocks = {"protocol": 0, "statistical": 0}
        self.aborted = {"protocol": 0, "statistical": 0}
        self.final_bits_total = 0
        self.protocol_fallbacks = 0  # protocol chosen but no worker free: ran statistical instead
        self.failures = 0  # protocol blocks lost to the twin itself (worker or node-to-node failure)
        self.epoch_resets = 0
        # achieved / model rate when last measured without attack (finite-size and decoy overheads): the rate
        # estimate right after a change of conditions, until the first block at the new conditions is in
        self._efficiency = 1.0
        self._protocol_cpu = 0.0  # EWMA, CPU seconds of both ends per protocol block
        self._tokens = 0.0
        self._protocol_retry_at = 0.0
        self._generation = 0
        self._last_block_at = 0.0
        self._tokens_at = time.monotonic()
        self._clock = time.monotonic()  # wall-clock time the simulation has reached (link time / time scale)
        self._probe = True  # conditions changed: run a block now even if the buffer is full
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._protocol_task: asyncio.Task | None = None
        self._commit_lock = asyncio.Lock()  # both ends append blocks in the order of their commits
        self.set_params(spec.params)

    # -- BlockProducer -----------------------------------------------------------------------------------
    def set_params(self, params: LinkParams) -> None:
        if hasattr(self, "_model"):
            self._conditions_changed()
        self.params = params
        self.pulses = block_size_for(params, self.spec.postprocessing_block_bits)
        self._model = performance(params)

    def set_attack(self, attack: AttackConfig) -> None:
        self._conditions_changed()
        self.attack = attack

    def _conditions_changed(self) -> None:
        """Called before the change: the recent blocks were measured at the old conditions."""
        self._generation += 1  # blocks started before now no longer count for the rate
        rate = self.achieved_rate_bps()
        if rate and self._model.secret_key_rate_bps > 0 and not self.attack.active:
            self._efficiency = min(1.0, rate / self._model.secret_key_rate_bps)
        self._recent.clear()  # the achieved rate is measured again at the new conditions
        self._probe = True
        self._clock = min(self._clock, time.monotonic())
        self._wake.set()

    def achieved_rate_bps(self) -> float | None:
        """Final key bits per second of link time over the recent blocks (None before the first)."""
        if not self._recent:
            return None
        seconds = sum(s for _, s in self._recent)
        return sum(b for b, _ in self._recent) / seconds if seconds > 0 else 0.0

    def performance(self) -> LinkPerformance:
        rate = self.achieved_rate_bps()
        # Until a block at the current conditions is in, the model's QBER (the last block's is out of date).
        qber = self.last_block.get("qber") if self._recent else None
        return LinkPerformance(
            secret_key_rate_bps=self._model.secret_key_rate_bps * self._efficiency if rate is None else rate,
            qber=self._model.qber if qber is None else float(qber),
            loss_db=self._model.loss_db,
            transmittance=self._model.transmittance,
            details={"model": self._model.details, "model_secret_key_rate_bps": self._model.secret_key_rate_bps},
        )

    def seconds_per_block(self) -> float:
        rate = self.performance().secret_key_rate_bps * self.time_scale
        return self.block_size_bits / rate if rate > 0 else float("inf")

    def ready_blocks(self) -> int:
        return self.keys.buffered // (self.block_size_bits // 8)

    def next_block(self) -> KeyBlock:
        """A store block cut from this end's buffer, with the other end's copy (local) or a reference to it."""
        nbytes = self.block_size_bits // 8
        epoch, offset = self.keys.epoch, self.keys.cut_at
        key = self.keys.cut(epoch, offset, nbytes)
        cut = {"epoch": epoch, "offset": offset, "nbytes": nbytes}
        peer_key = self.peer.local.cut(self.link_id, epoch, offset, nbytes) if self.peer.local else None
        if peer_key is not None and peer_key != key:
            raise AssertionError(f"link {self.link_id}: the two ends' keys differ")  # never deliver such a block
        self._wake.set()  # room in the buffer
        return KeyBlock(key, {"mode": self.last_block.get("mode")}, peer_key=peer_key, cut=cut)

    def reset_epoch(self) -> None:
        """The other end's buffer does not match ours (it restarted): drop ours, start again from offset 0."""
        self.epoch_resets += 1
        self.keys.new_epoch()
        self._wake.set()

    # -- engine ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"qkd-engine-{self.link_id}")

    async def stop(self) -> None:
        for task in (self._task, self._protocol_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _target_bytes(self) -> int:
        rate = (self.achieved_rate_bps() or self._model.secret_key_rate_bps) * self.time_scale
        block = self.block_size_bits // 8
        return max(2 * block, min(int(rate * self.AHEAD_S / 8), self.spec.key_store_capacity_bits // 32))

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the link alive; the next block tries again
                log.exception("link %s: post-processing block failed", self.link_id)
                await asyncio.sleep(0.5)

    async def _step(self) -> None:
        now = time.monotonic()
        wait = self._clock - now - self.AHEAD_S
        full = self.keys.buffered >= self._target_bytes()
        if (self.is_up() and full and not self._probe and self.configured_fraction != 1.0
                and now - self._last_block_at > self.MONITOR_S):
            # Store and buffer are full: the link goes on measuring (QBER, decoys...) for its telemetry, as a
            # device does, and its key is discarded.
            clock = self._clock
            await self._statistical_blocks(1, keep=False)
            self._clock = clock  # discarded key is no link time the pacer waits for
            return
        if not self.is_up() or ((full or wait > 0) and not self._probe):
            self._wake.clear()
            await wait_event(self._wake, max(0.01, min(wait, 0.25)) if not full else 0.25)
            return
        self._probe = False
        self._clock = max(self._clock, now - 1.0)  # an idle link does not build up credit
        strict = self.mode == "protocol" and self.configured_fraction == 1.0 and self.node.pool.size > 0
        in_flight = self._protocol_task is not None and not self._protocol_task.done()
        # Auto mode keeps one protocol block in flight at most and fills the rest with statistical blocks.
        if not (in_flight and self.configured_fraction is None) and self._choose_protocol():
            if in_flight:
                # The sampled fraction asks for another protocol block: wait for the one running (a protocol
                # block takes longer than its link time, so an explicit fraction costs key rate; auto does not).
                await asyncio.wait({self._protocol_task})  # type: ignore[arg-type]
                return
            self._protocol_task = asyncio.create_task(self._protocol_block_task(),
                                                      name=f"qkd-block-{self.link_id}")
            return
        if strict:  # protocol on every block: no statistical block, wait for a worker or the block running
            if in_flight:
                await asyncio.wait({self._protocol_task})  # type: ignore[arg-type]
            else:
                await asyncio.sleep(0.05)
            return
        await self._statistical_blocks(16)

    async def _protocol_block_task(self) -> None:
        estimate = self._protocol_cpu or 0.3
        self._tokens -= estimate  # the CPU budget is spent when the block starts (auto mode)
        try:
            outcome = await self._protocol_block()
        except Exception:
            log.exception("link %s: protocol block failed", self.link_id)
            outcome = "failed"
        if outcome != "ran":
            self._tokens += estimate
            if self.configured_fraction == 1.0:
                await asyncio.sleep(0.05)  # protocol on every block: try again shortly, do not spin
            elif outcome.startswith("busy"):
                self.protocol_fallbacks += 1
                self._protocol_retry_at = time.monotonic() + 0.25  # workers busy elsewhere: not on every block
        self._wake.set()

    def _choose_protocol(self) -> bool:
        if self.mode != "protocol" or self.node.pool.size == 0:
            return False
        if self.configured_fraction != 1.0 and time.monotonic() < self._protocol_retry_at:
            return False
        if self.configured_fraction is not None:
            return bool(self._choice.random() < self.configured_fraction)
        # Auto: a token bucket of CPU seconds filled at cpu_share per second of wall time.
        now = time.monotonic()
        cap = max(2.0 * self._protocol_cpu, 0.5)
        self._tokens = min(cap, self._tokens + (now - self._tokens_at) * self.cpu_share)
        self._tokens_at = now
        return self._tokens >= self._protocol_cpu

    def target_protocol_fraction(self) -> float:
        """Configured fraction, or the one the CPU budget sustains at the link's (time-scaled) block rate."""
        if self.mode != "protocol":
            return 0.0
        if self.configured_fraction is not None:
            return self.configured_fraction
        if self._protocol_cpu <= 0:
            return 1.0
        wall_per_block = block_duration_s(self.params, self.pulses) / self.time_scale
        return min(1.0, self.cpu_share * wall_per_block / self._protocol_cpu)

    # -- statistical ---------------------------------------------------------------------------------------
    async def _statistical_blocks(self, limit: int, fallback: str = "", keep: bool = True) -> None:
        """Up to ``limit`` statistical blocks (each ~0.3 ms of CPU on the event loop), committed in one message."""
        items: list[dict[str, Any]] = []
        keys: list[bytes] = []
        deadline = time.perf_counter() + 0.005
        for _ in range(limit):
            seed = _fresh_seed()
            result = run_statistical_block(self.params, self.attack, block_size=self.pulses, seed=seed,
                                           config=self.config)
            tel = result.telemetry
            tel["cpu_s"] = tel.get("block_latency_s")
            if fallback:
                tel["protocol_fallback"] = fallback
            tel["key_kept"] = keep
            self._record(tel)
            if not result.aborted and keep:
                items.append({"seed": str(seed), "bits": len(result.alice_key) * 8})
                keys.append(result.alice_key)
            if (self.keys.buffered + sum(map(len, keys)) >= self._target_bytes()
                    or self._clock > time.monotonic() + self.AHEAD_S or time.perf_counter() > deadline):
                break
        if items:
            await self._commit(items, keys)
        await asyncio.sleep(0)

    async def _commit(self, items: list[dict[str, Any]], keys: list[bytes]) -> None:
        """Append blocks at the other end, then here, in one order at both ends."""
        async with self._commit_lock:
            epoch, offset = self.keys.epoch, self.keys.appended
            try:
                await self.peer.commit(epoch, offset, items)
            except Exception as exc:
                log.warning("link %s: commit to %s failed (%s): new key epoch", self.link_id, self.peer.peer, exc)
                self.reset_epoch()
                return
            if self.keys.epoch == epoch:
                for key in keys:
                    self.keys.append(epoch, self.keys.appended, key)
                self.on_key()

    # -- protocol --------------------------------------------------------------------------------------
    async def _protocol_block(self) -> str:
        """Run one block as two parties. Returns "ran", or why it could not start ("busy: ...")."""
        session_id = uuid.uuid4().hex
        alice = PartySession(session_id, self.node.id, self.peer.peer, self.link_id, "alice", self.node.peers)
        pool = self.node.pool
        local_peer = self.peer.local is not None
        worker = pool.try_acquire(alice, reserve_peer=local_peer) if pool.my_turn(self.link_id) else None
        if worker is None:
            return "busy: no free protocol worker at " + self.node.id
        pool.served(self.link_id)
        alice.worker = worker
        self.node.sessions.add(alice)
        started = time.perf_counter()
        params, attack, pulses, generation = self.params, self.attack, self.pulses, self._generation
        job = {
            "params": json.dumps(params.to_mapping()), "attack": json.dumps(attack.to_mapping()),
            "block_size": pulses, "quantum_seed": str(_fresh_seed()),
            "config": json.dumps(dataclasses.asdict(self.config)),
        }
        bob: dict[str, Any] = {}
        try:
            await alice.run({**job, "party_seed": str(_fresh_seed())})
            try:
                opened = await self.peer.open({"session": session_id, "link": self.link_id, **job})
            except Exception as exc:
                opened = {"busy": True, "error": str(exc)}
            if opened.get("busy"):
                await alice.cancel("peer busy")
                await alice.result(5.0)
                return f"busy: no free protocol worker at {self.peer.peer}"
            a = await alice.result(PROTOCOL_BLOCK_TIMEOUT_S)
            try:
                bob = await self.peer.result(session_id)
            except Exception as exc:
                bob = {"ok": False, "aborted": True, "final_bits": 0, "telemetry": {}, "error": str(exc)}
        finally:
            self.node.sessions.remove(session_id)
            pool.release_reservation(session_id)  # Bob never opened (e.g. a failure): free his worker
        await self._finish_protocol(session_id, a, bob, params, attack, pulses, started, generation)
        return "ran"

    async def _finish_protocol(self, session_id: str, a: PartyOutcome, bob: dict[str, Any], params: LinkParams,
                               attack: AttackConfig, pulses: int, started: float, generation: int) -> None:
        failure = a.error or str(bob.get("error") or "")
        agreed = (a.ok and bool(bob.get("ok")) and not a.aborted and not bob.get("aborted")
                  and len(a.key) * 8 == int(bob.get("final_bits", -1)))
        if agreed and self.peer.local is not None:
            # Both ends live in this process: compare the bytes themselves (the protocol's verification hash
            # makes a difference improbable; a discarded block is the rule when it happens).
            agreed = self.peer.local.keys[self.link_id].pending.get(session_id) == a.key
        b_tel = bob.get("telemetry") or {}
        extra = {
            "mode": "protocol", "aborted": not agreed,
            "classical_messages": int(a.telemetry.get("classical_messages_sent", 0))
            + int(b_tel.get("classical_messages_sent", 0)),
            "classical_bytes": int(a.telemetry.get("classical_bytes_sent", 0))
            + int(b_tel.get("classical_bytes_sent", 0)),
            "block_latency_s": time.perf_counter() - started,
            "quantum_layer_cpu_s": a.telemetry.get("quantum_layer_cpu_s"),
            "cpu_s": float(a.telemetry.get("worker_cpu_s", 0.0)) + float(b_tel.get("worker_cpu_s", 0.0)),
            "attack": attack.to_mapping(), "parties": [self.node.id, self.peer.peer],
        }
        if not agreed and not (a.aborted and a.ok):
            extra["abort_reason"] = failure or str(a.telemetry.get("abort_reason") or "") or "final keys differ"
        if not agreed:
            extra["final_bits"] = 0
        tel = _merge_telemetry(params, pulses, PartyResult(b"", a.aborted, a.telemetry),
                               PartyResult(b"", bool(bob.get("aborted")), b_tel), extra)
        if failure:
            self.failures += 1
        if extra["cpu_s"] > 0:
            cpu = extra["cpu_s"]
            self._tokens -= cpu - (self._protocol_cpu or 0.3)  # the estimate was spent at the start
            self._protocol_cpu = cpu if self._protocol_cpu == 0 else 0.7 * self._protocol_cpu + 0.3 * cpu
        self._record(tel, count_rate=not failure, current=generation == self._generation)
        if not agreed:
            await self.peer.discard(session_id)
            return
        await self._commit([{"session": session_id}], [a.key])

    # -- telemetry -----------------------------------------------------------------------------------------
    def _record(self, tel: dict[str, Any], count_rate: bool = True, current: bool = True) -> None:
        """Account a finished block. A block started before the last change of conditions (``current`` False)
        is history, but not the link's present rate or QBER."""
        mode = str(tel.get("mode", "statistical"))
        self.blocks[mode] += 1
        self._last_block_at = time.monotonic()
        duration = float(tel.get("block_duration_s") or 0.0)
        self._clock += duration / self.time_scale
        final = int(tel.get("final_bits", 0)) if not tel.get("aborted") else 0
        if tel.get("aborted"):
            self.aborted[mode] += 1
        self.final_bits_total += final
        if count_rate and current:
            self._recent.append((final, duration))
        summary = jsonable({k: tel[k] for k in BLOCK_FIELDS if k in tel})
        summary.update(block=self.blocks["protocol"] + self.blocks["statistical"], link=self.link_id,
                       at=time.time())
        summary["secret_key_rate_bps"] = final / duration if duration else 0.0
        summary["final_bits"] = final
        summary["stale"] = not current
        self.history.append(summary)
        if current:
            self.last_block = summary
            self.last_by_mode[mode] = summary

    def recent_protocol_fraction(self) -> float:
        recent = list(self.history)[-64:]
        return sum(1 for b in recent if b.get("mode") == "protocol") / len(recent) if recent else 0.0

    def telemetry(self) -> dict[str, Any]:
        rate = self.achieved_rate_bps()
        return {
            "mode": self.mode,
            "protocol_fraction_configured": self.configured_fraction,
            "protocol_fraction_target": self.target_protocol_fraction(),
            "protocol_fraction_recent": self.recent_protocol_fraction(),
            "postprocessing_block_bits": self.spec.postprocessing_block_bits,
            "postprocessing_block_size": self.pulses,
            "achieved_secret_key_rate_bps": rate,
            "blocks": dict(self.blocks),
            "aborted_blocks": dict(self.aborted),
            "protocol_fallbacks": self.protocol_fallbacks,
            "failures": self.failures,
            "epoch_resets": self.epoch_resets,
            "final_bits_total": self.final_bits_total,
            "buffered_bits": self.keys.buffered * 8,
            "attack": self.attack.to_mapping(),
            "attack_active": self.attack.active,
            "last_block": self.last_block,
            "last_protocol_block": self.last_by_mode.get("protocol"),
            "last_statistical_block": self.last_by_mode.get("statistical"),
        }
