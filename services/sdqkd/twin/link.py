"""A QKD link at run time: its block producer, its state (up / cut) and the task that fills both key stores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.sdqkd.physics.attacks import AttackConfig

from .errors import BadRequest
from .parties import wait_event
from .producer import BlockProducer, KeyBlock
from .store import NodeStore
from .topology import LinkSpec

log = logging.getLogger("twin.link")

# Deliver a block to a store that is not in this process (the other end of the link, --node mode): link, seq,
# owner, key bytes, or b"" with a cut reference (two-party producers: the other end cuts its own key).
RemoteBlockSink = Callable[[str, int, str, bytes, dict[str, Any] | None], Awaitable[None]]


class LinkRuntime:
    def __init__(
        self,
        spec: LinkSpec,
        producer: BlockProducer,
        stores: dict[str, NodeStore],
        remote_sink: RemoteBlockSink | None = None,
    ):
        self.spec = spec
        self.id = spec.id
        self.producer = producer
        self.stores = stores  # the ends of this link whose store lives in this process
        self.remote_sink = remote_sink
        self.state = "up"
        self.consumed_bits = 0
        self.blocks_produced = 0
        self.last_qber = producer.performance().qber
        self._seq = max((store.max_seq(self.id) for store in stores.values()), default=-1) + 1
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        if hasattr(producer, "on_key"):
            producer.on_key = self._wake.set  # new key in a two-party producer's buffer

    # -- views used by routing and telemetry -------------------------------------------------------------
    def other_end(self, node_id: str) -> str:
        a, b = self.spec.endpoints
        return b if node_id == a else a

    def capacity_bits(self) -> int:
        return self.spec.key_store_capacity_bits

    def fill_bits(self) -> int:
        return max((store.fill_bytes(self.id) * 8 for store in self.stores.values()), default=0)

    def available_bits(self, sender: str) -> int | None:
        """Key ``sender`` may send with on this link, or None when its store is not in this process."""
        store = self.stores.get(sender)
        return store.available_bytes(self.id) * 8 if store else None

    def is_up(self) -> bool:
        return self.state == "up"

    def telemetry(self) -> dict[str, Any]:
        perf = self.producer.performance()
        up = self.is_up()
        simulated = getattr(self.producer, "telemetry", None)
        return {
            "id": self.id,
            "endpoints": list(self.spec.endpoints),
            "technology": self.spec.technology,
            "mode": self.spec.mode,
            "state": self.state,
            "secret_key_rate_bps": perf.secret_key_rate_bps if up else 0.0,
            "model_secret_key_rate_bps": perf.details.get("model_secret_key_rate_bps", perf.secret_key_rate_bps),
            "qber": perf.qber,
            "loss_db": perf.loss_db,
            "key_store_fill_bits": self.fill_bits(),
            "key_store_capacity_bits": self.capacity_bits(),
            "key_store_fill_ratio": self.fill_bits() / self.capacity_bits(),
            "keys_consumed_bits": self.consumed_bits,
            "blocks_produced": self.blocks_produced,
            "description": self.spec.description,
            # mode protocol/statistical, at the node that runs the link: per-block telemetry (docs/twin.md)
            "protocol": simulated() if simulated is not None and self.stores else None,
        }

    # -- fault injection ---------------------------------------------------------------------------------
    def cut(self) -> None:
        self.state = "cut"

    def restore(self) -> None:
        self.state = "up"
        self._wake.set()

    def set_physics(self, **changes: Any) -> None:
        self.producer.set_params(self.producer.params.with_changes(**changes))
        self._wake.set()

    def set_attack(self, attack: AttackConfig) -> None:
        """Eavesdropping or a detector fault on this link (protocol/statistical modes; takes effect next block)."""
        set_attack = getattr(self.producer, "set_attack", None)
        if set_attack is None:
            raise BadRequest("attacks need a link in mode protocol or statistical", [{"mode": self.spec.mode}])
        set_attack(attack)
        self._wake.set()

    def note_consumed(self, nbytes: int) -> None:
        self.consumed_bits += nbytes * 8
        self._wake.set()  # a store that was full has room again

    # -- generation --------------------------------------------------------------------------------------
    def start(self) -> None:
        if hasattr(self.producer, "start"):
            self.producer.start()  # the post-processing engine runs ahead of the store
        self._task = asyncio.create_task(self._run(), name=f"link-{self.id}")

    async def stop(self) -> None:
        if hasattr(self.producer, "stop") and self._task:
            await self.producer.stop()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _room_blocks(self) -> int:
        block_bytes = self.producer.block_size_bits // 8
        room = self.capacity_bits() // 8 - max(store.fill_bytes(self.id) for store in self.stores.values())
        return max(0, room // block_bytes)

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        await wait_event(self._wake, seconds)  # not asyncio.wait_for: it can swallow a cancellation (3.11)

    async def _run(self) -> None:
        next_due: float | None = None
        while True:
            interval = self.producer.seconds_per_block()
            if not self.is_up() or interval == float("inf") or self._room_blocks() == 0:
                next_due = None  # a paused link accumulates nothing
                await self._idle(0.05)
                continue
            now = time.monotonic()
            if next_due is None:
                next_due = now + interval
            if now < next_due:
                await self._idle(min(next_due - now, 0.05))
                continue
            due = min(64, int((now - next_due) / interval) + 1, self._room_blocks())
            ready = getattr(self.producer, "ready_blocks", None)
            if ready is not None:
                due = min(due, ready())  # the simulation has not distilled that much yet: wait for it
                if due == 0:
                    await self._idle(0.05)
                    continue
            try:
                await self._deliver([self.producer.next_block() for _ in range(due)])
            except Exception as exc:  # the other end's process is down: those blocks are lost, as on a real link
                log.warning("link %s: delivering key blocks failed: %s", self.id, exc)
                if getattr(exc, "status", None) == 409 and hasattr(self.producer, "reset_epoch"):  # kme.PeerError
                    self.producer.reset_epoch()  # the other end restarted: both ends start a new key buffer
                next_due = None
                await self._idle(0.5)
                continue
            next_due += due * interval
            next_due = max(next_due, now - 1.0)  # never build a backlog larger than a second
            await asyncio.sleep(0)

    def _sendable_bytes(self) -> dict[str, int]:
        """Key each end may still send with, as seen from a local store (the peer's = our unconsumed copy of it)."""
        a, b = self.spec.endpoints
        local_end = a if a in self.stores else b
        store = self.stores[local_end]
        mine = store.available_bytes(self.id)
        return {local_end: mine, self.other_end(local_end): store.fill_bytes(self.id) - mine}

    async def _deliver(self, keys: list[KeyBlock]) -> None:
        a, b = self.spec.endpoints
        # A new block belongs to the end with less key to send with: traffic is often one-way (the master's
        # side sends), and blocks the other end never uses must not crowd out the store.
        sendable = self._sendable_bytes()
        blocks = []
        for key in keys:
            seq = self._seq
            self._seq += 1
            owner = a if (sendable[a], seq % 2) <= (sendable[b], 1 - seq % 2) else b
            sendable[owner] += len(key.key)
            blocks.append((seq, owner, key))
        # Every block reaches the end that does not own it first, then its owner: the owner only ever sends with
        # bits the other end surely holds, even if the process dies between the two writes.
        for to_owner in (False, True):
            for end in (a, b):
                batch = [blk for blk in blocks if (blk[1] == end) == to_owner]
                if not batch:
                    continue
                store = self.stores.get(end)
                if store is not None:
                    # Each end stores its own copy: the generating end's, or the other end's own when a
                    # two-party producer made one (identical bytes, checked when both ends live here).
                    own = [(seq, owner, blk.key if end == a or blk.peer_key is None else blk.peer_key)
                           for seq, owner, blk in batch]
                    store.add_blocks(self.id, own)
                elif self.remote_sink is not None:
                    for seq, owner, blk in batch:  # a cut reference travels instead of the key bytes
                        await self.remote_sink(self.id, seq, owner, b"" if blk.cut is not None else blk.key, blk.cut)
        self.blocks_produced += len(blocks)
