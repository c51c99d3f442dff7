"""A protocol worker: runs one end (Alice or Bob) of one post-processing block at a time, in its own process.

    python -m services.sdqkd.twin.qkdworker        (started by the twin's ``PartyPool``, never by hand)

Why a process: the pipeline is CPU-bound Python + NumPy; in a thread it would hold the GIL against the KMEs'
event loop (every request would wait for the switch interval). The worker runs at a lower priority (nice 10), so
the KMEs keep their latency when the 2 cores are busy.

The worker holds only its own end's record. Its classical channel is its parent: every message the party sends
goes up the pipe as a ``send`` frame, and the parent posts it to the other node over the node-to-node HTTPS
interface; the other node's answers come back down as ``deliver`` frames. Frames on stdin/stdout are a 4-byte
big-endian length followed by ``channel.encode_message`` of a dict with an ``op``:

- parent -> worker: ``run`` (session, role, params, attack, block_size, quantum_seed, party_seed, config),
  ``deliver`` (session, data), ``cancel`` (session)
- worker -> parent: ``ready``, ``send`` (session, data), ``done`` (session, ok, key, aborted, telemetry, error)

The quantum layer is simulated from the block's shared ``quantum_seed``, which stands for the photons (or pairs,
or coherent states) both ends receive over the fibre; each end keeps only its own record of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import struct
import sys
import time
import traceback
from typing import Any, BinaryIO

import numpy as np

from services.sdqkd.physics.analytical import LinkParams
from services.sdqkd.physics.attacks import AttackConfig
from services.sdqkd.physics.channel import ChannelClosed, Message, decode_message, encode_message
from services.sdqkd.physics.pipeline import AliceSide, BobSide, PipelineConfig, simulate_quantum_layer

FRAME_HEADER = struct.Struct("!I")


def jsonable(value: Any) -> Any:
    """Telemetry as plain JSON (NumPy scalars and non-finite floats made portable)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class FrameIO:
    """Length-prefixed frames over two file descriptors, with a read timeout (select)."""

    def __init__(self, rfd: int, out: BinaryIO) -> None:
        self.rfd = rfd
        self.out = out
        self._buf = bytearray()

    def write(self, message: Message) -> None:
        data = encode_message(message)
        self.out.write(FRAME_HEADER.pack(len(data)) + data)
        self.out.flush()

    def _fill(self, need: int, deadline: float | None) -> None:
        while len(self._buf) < need:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.rfd], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise EOFError
            self._buf += chunk

    def read(self, timeout: float | None = None) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._fill(FRAME_HEADER.size, deadline)
        (size,) = FRAME_HEADER.unpack_from(self._buf)
        self._fill(FRAME_HEADER.size + size, deadline)
        data = bytes(self._buf[FRAME_HEADER.size : FRAME_HEADER.size + size])
        del self._buf[: FRAME_HEADER.size + size]
        return decode_message(data)


class PipeChannel:
    """The party's ``ClassicalChannel``: messages travel through the parent to the other node."""

    def __init__(self, io: FrameIO, session: str, default_timeout: float) -> None:
        self.io = io
        self.session = session
        self.default_timeout = default_timeout
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = 0

    def send(self, message: Message) -> None:
        data = encode_message(message)
        self.io.write({"op": "send", "session": self.session, "data": data})
        self.bytes_sent += len(data)
        self.messages_sent += 1

    def recv(self, timeout: float | None = None) -> Message:
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        while True:
            try:
                frame = self.io.read(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ChannelClosed("no message from the peer in time") from None
            if frame.get("session") != self.session:
                continue  # a late frame of an earlier block
            if frame["op"] == "cancel":
                raise ChannelClosed(str(frame.get("reason", "cancelled")))
            if frame["op"] == "deliver":
                data = frame["data"]
                self.bytes_received += len(data)
                self.messages_received += 1
                return decode_message(data)


def run_party(io: FrameIO, job: Message) -> Message:
    cpu0 = time.process_time()
    params = LinkParams.from_mapping(json.loads(job["params"]))
    attack = AttackConfig.from_mapping(json.loads(job["attack"]))
    config = PipelineConfig(**json.loads(job["config"]))
    quantum_rng = np.random.default_rng(int(job["quantum_seed"]))
    alice_rec, bob_rec = simulate_quantum_layer(params, attack, int(job["block_size"]), quantum_rng)
    quantum_cpu = time.process_time() - cpu0
    if job["role"] == "alice":
        del bob_rec  # this end is Alice: Bob's record is not hers to keep
        party: AliceSide | BobSide = AliceSide(params, alice_rec, int(job["party_seed"]), config)
    else:
        del alice_rec
        party = BobSide(params, bob_rec, int(job["party_seed"]), config)
    channel = PipeChannel(io, job["session"], config.recv_timeout_s)
    result = party.run(channel)
    telemetry = dict(result.telemetry)
    telemetry.update(quantum_layer_cpu_s=quantum_cpu, worker_cpu_s=time.process_time() - cpu0,
                     classical_bytes_sent=channel.bytes_sent, classical_messages_sent=channel.messages_sent)
    return {"op": "done", "session": job["session"], "ok": True, "key": result.key, "aborted": result.aborted,
            "telemetry": json.dumps(jsonable(telemetry)), "error": ""}


def main() -> int:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries frames only; a stray print must not corrupt them
    with contextlib.suppress(OSError):
        os.nice(10)  # the KMEs come first on a busy machine
    # Ctrl-C reaches the whole process group: the twin shuts its workers down (stdin closes) in its own time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    io = FrameIO(sys.stdin.fileno(), out)
    io.write({"op": "ready", "pid": os.getpid()})
    while True:
        try:
            job = io.read()
        except EOFError:
            return 0  # the twin went away
        if job.get("op") != "run":
            continue  # deliver/cancel of a block that already ended
        try:
            reply = run_party(io, job)
        except Exception as exc:  # report and stay available for the next block
            reply = {"op": "done", "session": job.get("session"), "ok": False, "key": b"", "aborted": True,
                     "telemetry": "{}", "error": f"{type(exc).__name__}: {exc}"}
            if not isinstance(exc, ChannelClosed):
                traceback.print_exc(file=sys.stderr)
        io.write(reply)


if __name__ == "__main__":
    sys.exit(main())
