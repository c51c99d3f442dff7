"""The two parties of a protocol-mode block: worker processes, and the sessions that connect them across nodes.

A ``PartyPool`` keeps a few ``qkdworker`` processes (bounded: 2 by default, one block at a time when both ends
live in this process). A ``PartySession`` is one end of one block on one node: it feeds its worker the messages
the other end sent, and posts the worker's messages to the other node over the node-to-node interface
(``POST /twin/v1/qkd/msg``, HTTPS with node certificates), one at a time and in order. The two ends never share
memory: even when both nodes live in this process, every classical message crosses the HTTP listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.sdqkd.physics.channel import decode_message, encode_message

from .errors import TwinError
from .qkdworker import FRAME_HEADER

log = logging.getLogger("twin.qkd")

REPO_ROOT = Path(__file__).resolve().parents[3]


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds. Unlike ``asyncio.wait_for`` on Python 3.11, a cancellation
    that arrives as the event fires is never swallowed (a swallowed one kept a stopping twin's tasks alive)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


async def wait_future(future: asyncio.Future, timeout: float) -> bool:
    """Wait for ``future`` (without cancelling it) at most ``timeout`` seconds; cancellation-safe as above."""
    await asyncio.wait({future}, timeout=timeout)
    return future.done()


class BytePeers(Protocol):
    async def post_bytes(self, node_id: str, path: str, params: dict[str, str], data: bytes) -> None: ...


@dataclass
class PartyOutcome:
    """What a worker reports when its end of a block is over."""

    ok: bool
    key: bytes
    aborted: bool
    telemetry: dict[str, Any]
    error: str = ""


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.session: PartySession | None = None
        self.ready = asyncio.Event()
        self.alive = True
        self.reserved = ""  # session ID this idle worker is held for (the other end of a block in this process)
        self._reader: asyncio.Task | None = None

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name=f"qkd-worker-{self.proc.pid}")

    async def write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        data = encode_message(message)
        self.proc.stdin.write(FRAME_HEADER.pack(len(data)) + data)
        await self.proc.stdin.drain()

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                (size,) = FRAME_HEADER.unpack(await self.proc.stdout.readexactly(FRAME_HEADER.size))
                frame = decode_message(await self.proc.stdout.readexactly(size))
                op = frame.get("op")
                if op == "ready":
                    self.ready.set()
                    continue
                session = self.session
                if session is None or frame.get("session") != session.id:
                    continue
                if op == "send":
                    session.outgoing(frame["data"])
                elif op == "done":
                    session.finished(PartyOutcome(
                        bool(frame["ok"]), frame["key"], bool(frame["aborted"]), json.loads(frame["telemetry"]),
                        str(frame.get("error", "")),
                    ))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            if self.session is not None:
                self.session.finished(PartyOutcome(False, b"", True, {}, "protocol worker exited"))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class PartyPool:
    """A bounded set of protocol worker processes. ``try_acquire`` never waits: a busy pool means the block runs
    in statistical mode (or, for a link that asked for protocol on every block, later), so two nodes can never
    wait on each other's workers."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.workers: list[Worker] = []
        self._starting: asyncio.Task | None = None
        self._waiting: dict[str, float] = {}  # link -> when it first asked for workers

    def start(self) -> None:
        if self.size > 0 and self._starting is None:
            self._starting = asyncio.create_task(self._spawn(), name="qkd-worker-pool")

    async def _spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        for _ in range(self.size):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.sdqkd.twin.qkdworker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env=env,
            )
            worker = Worker(proc)
            worker.start_reading()
            self.workers.append(worker)

    def my_turn(self, link: str) -> bool:
        """Links that want to start a protocol block take turns, oldest wait first, so a link that finishes a
        block and starts the next at once cannot starve another (waits older than 2 s are forgotten)."""
        now = time.monotonic()
        self._waiting = {k: t for k, t in self._waiting.items() if now - t < 2.0}
        self._waiting.setdefault(link, now)
        return min(self._waiting, key=self._waiting.__getitem__) == link

    def served(self, link: str) -> None:
        self._waiting.pop(link, None)

    def idle(self) -> int:
        return len(self._free())

    def _free(self) -> list[Worker]:
        return [w for w in self.workers if w.alive and w.ready.is_set() and w.session is None and not w.reserved]

    def try_acquire(self, session: PartySession, reserve_peer: bool = False) -> Worker | None:
        """A worker for ``session``: the one reserved for it, else a free one. ``reserve_peer`` (both ends in
        this process) takes two at once, the second held for the other end's session of the same ID, so two
        links can never each hold one worker and wait for the other's."""
        for worker in self.workers:
            if worker.reserved == session.id and worker.alive:
                worker.reserved, worker.session = "", session
                return worker
        free = self._free()
        if len(free) < (2 if reserve_peer else 1):
            return None
        free[0].session = session
        if reserve_peer:
            free[1].reserved = session.id
        return free[0]

    def release_reservation(self, session_id: str) -> None:
        for worker in self.workers:
            if worker.reserved == session_id:
                worker.reserved = ""

    async def close(self) -> None:
        if self._starting:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        for worker in self.workers:
            await worker.stop()


@dataclass
class PartySession:
    """One end of one protocol block on one node."""

    id: str
    node: str
    peer: str
    link: str
    role: str  # "alice" | "bob"
    peers: BytePeers
    worker: Worker | None = None
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    _outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    _sender: asyncio.Task | None = None
    _next_in: int = 0
    _early: dict[int, bytes] = field(default_factory=dict)
    messages_out: int = 0

    async def run(self, job: dict[str, Any]) -> None:
        """Start the worker on this end's job (the caller acquired ``worker``)."""
        assert self.worker is not None
        self._sender = asyncio.create_task(self._send_loop(), name=f"qkd-send-{self.id[:8]}")
        await self.worker.write({"op": "run", "session": self.id, "role": self.role, **job})

    # -- worker -> other node ----------------------------------------------------------------------------
    def outgoing(self, data: bytes) -> None:
        self._outbox.put_nowait(data)

    async def _send_loop(self) -> None:
        seq = 0
        while True:
            data = await self._outbox.get()
            try:
                await self.peers.post_bytes(self.peer, "/twin/v1/qkd/msg",
                                            {"session": self.id, "seq": str(seq), "link": self.link}, data)
            except Exception as exc:  # the other end is gone: this end's block is over
                log.info("qkd session %s: message to %s failed: %s", self.id[:8], self.peer, exc)
                await self.cancel(f"classical channel to {self.peer} failed")
                self._outbox.task_done()
                while not self._outbox.empty():  # nothing more will be sent; let close() return
                    self._outbox.get_nowait()
                    self._outbox.task_done()
                return
            seq += 1
            self.messages_out += 1
            self._outbox.task_done()

    # -- other node -> worker ----------------------------------------------------------------------------
    async def incoming(self, seq: int, data: bytes) -> None:
        """A message from the other end; delivered to the worker in the order it was sent."""
        if seq < self._next_in:
            return  # a retransmission
        self._early[seq] = data
        while self._next_in in self._early and self.worker is not None and not self.done.done():
            await self.worker.write({"op": "deliver", "session": self.id, "data": self._early.pop(self._next_in)})
            self._next_in += 1

    async def cancel(self, reason: str) -> None:
        if self.worker is not None and not self.done.done():
            with contextlib.suppress(Exception):
                await self.worker.write({"op": "cancel", "session": self.id, "reason": reason})

    def finished(self, outcome: PartyOutcome) -> None:
        if self.worker is not None and self.worker.session is self:
            self.worker.session = None  # free for the next block
        if not self.done.done():
            self.done.set_result(outcome)

    async def result(self, timeout: float) -> PartyOutcome:
        try:
            if not await wait_future(self.done, timeout):
                await self.cancel("timeout")
                if not await wait_future(self.done, 5):
                    return PartyOutcome(False, b"", True, {}, "protocol worker did not answer")
            return self.done.result()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._sender is not None:
            # Let the last messages (e.g. Alice's PA announcement) reach the other end before stopping.
            if self.done.done() and not self._sender.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox.join(), 10)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender


class SessionNotFound(TwinError):
    status = 404


class NodeSessions:
    """The protocol sessions one node takes part in, by ID."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.sessions: dict[str, PartySession] = {}

    def add(self, session: PartySession) -> None:
        self.sessions[session.id] = session

    def get(self, session_id: str) -> PartySession:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound("no such protocol session", [{"session": session_id}])
        return session

    def remove(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
