"""The classical channel between the two ends of a link.

Alice and Bob never share memory: every piece of information one end learns about the other's data travels as a
message through a ``ClassicalChannel``. Messages are dicts of JSON scalars, lists, ``bytes`` and NumPy arrays,
serialised to bytes by ``encode_message`` (so any transport that moves bytes can carry them, e.g. the twin's
node-to-node HTTP interface) and counted.
"""

from __future__ import annotations

import json
import queue
import struct
from typing import Any, Protocol

import numpy as np

Message = dict[str, Any]


class ChannelClosed(RuntimeError):
    """The peer went away or did not answer in time."""


class ClassicalChannel(Protocol):
    """One end of an authenticated classical channel."""

    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int

    def send(self, message: Message) -> None: ...

    def recv(self, timeout: float | None = None) -> Message: ...


def encode_message(message: Message) -> bytes:
    """Serialise a message: a JSON header, then the raw buffers of its arrays and bytes values."""
    header: dict[str, Any] = {}
    buffers: list[bytes] = []
    offset = 0
    for key, value in message.items():
        if isinstance(value, np.ndarray):
            raw = np.ascontiguousarray(value).tobytes()
            header[key] = {"__nd__": [value.dtype.str, list(value.shape), offset, len(raw)]}
        elif isinstance(value, bytes | bytearray):
            raw = bytes(value)
            header[key] = {"__b__": [offset, len(raw)]}
        else:
            header[key] = value
            continue
        buffers.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("!I", len(head)) + head + b"".join(buffers)


def decode_message(data: bytes) -> Message:
    (head_len,) = struct.unpack_from("!I", data, 0)
    header = json.loads(data[4 : 4 + head_len])
    body = memoryview(data)[4 + head_len :]
    message: Message = {}
    for key, value in header.items():
        if isinstance(value, dict) and "__nd__" in value:
            dtype, shape, off, size = value["__nd__"]
            message[key] = np.frombuffer(body[off : off + size], dtype=np.dtype(dtype)).reshape(shape)
        elif isinstance(value, dict) and "__b__" in value:
            off, size = value["__b__"]
            message[key] = bytes(body[off : off + size])
        else:
            message[key] = value
    return message


class InProcessChannel:
    """One end of an in-process channel (two queues of serialised messages). Build a pair with ``pair()``."""

    def __init__(self, outbox: queue.Queue, inbox: queue.Queue, default_timeout: float = 60.0) -> None:
        self._outbox = outbox
        self._inbox = inbox
        self.default_timeout = default_timeout
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0

    @classmethod
    def pair(cls, default_timeout: float = 60.0) -> tuple[InProcessChannel, InProcessChannel]:
        a_to_b: queue.Queue = queue.Queue()
        b_to_a: queue.Queue = queue.Queue()
        return cls(a_to_b, b_to_a, default_timeout), cls(b_to_a, a_to_b, default_timeout)

    def send(self, message: Message) -> None:
        data = encode_message(message)
        self.bytes_sent += len(data)
        self.messages_sent += 1
        self._outbox.put(data)

    def recv(self, timeout: float | None = None) -> Message:
        try:
            data = self._inbox.get(timeout=self.default_timeout if timeout is None else timeout)
        except queue.Empty:
            raise ChannelClosed("no message from the peer in time") from None
        if data is None:
            raise ChannelClosed("the peer closed the channel")
        self.bytes_received += len(data)
        self.messages_received += 1
        return decode_message(data)

    def close(self) -> None:
        """Wake the peer if it waits (used when one end fails)."""
        self._outbox.put(None)


class SocketChannel:
    """One end of a channel over a connected stream socket (TCP on loopback in tests, or between twin nodes):
    frames are an 8-byte big-endian length followed by an encoded message."""

    def __init__(self, sock: Any, default_timeout: float = 60.0) -> None:
        self._sock = sock
        self.default_timeout = default_timeout
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0

    def send(self, message: Message) -> None:
        data = encode_message(message)
        self._sock.sendall(struct.pack("!Q", len(data)) + data)
        self.bytes_sent += len(data)
        self.messages_sent += 1

    def _read_exactly(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self._sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ChannelClosed("the peer closed the connection")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def recv(self, timeout: float | None = None) -> Message:
        self._sock.settimeout(self.default_timeout if timeout is None else timeout)
        try:
            (size,) = struct.unpack("!Q", self._read_exactly(8))
            data = self._read_exactly(size)
        except TimeoutError:
            raise ChannelClosed("no message from the peer in time") from None
        self.bytes_received += len(data)
        self.messages_received += 1
        return decode_message(data)

    def close(self) -> None:
        self._sock.close()
