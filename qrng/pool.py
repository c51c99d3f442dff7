"""The entropy buffer pool: health-tested bytes filled ahead, served from memory, each byte exactly once.

Chunks (bytes + provenance) go into a backend queue and come out by an atomic pop, so two consumers (threads,
or processes sharing Redis) can never receive the same bytes. A popped chunk larger than the request is cut:
the unserved rest goes back to the front of the queue (it was never served), the served part is dropped.

- ``LocalBackend``: an in-process deque (one web process, tests, benchmarks).
- ``RedisBackend``: a Redis list of chunks with a byte counter, pushed and popped by Lua scripts (atomic
  across processes), for a pool shared by web workers and filled by a Celery task.

``EntropyPool.fill()`` tops the pool up from a ``SourceSet`` (call it from a Celery task, or run a
``PoolFiller`` thread); ``take(n)`` serves a small request; ``stream(n)`` serves a large one chunk by chunk,
never holding the whole response in memory.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from qrng.sources import (
    Alarm,
    EntropySourceError,
    NoHealthyEntropySource,
    Provenance,
    SourceSet,
)

DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_TARGET_BYTES = 16 << 20


class EntropyPoolEmpty(EntropySourceError):
    """The pool ran dry and no source could refill it in time (the API answers 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Chunk:
    data: bytes
    provenance: Provenance


class PoolBackend(Protocol):
    def push(self, chunk: Chunk) -> None: ...
    def push_front(self, chunk: Chunk) -> None: ...
    def pop(self) -> Chunk | None: ...
    def level(self) -> int: ...
    def clear(self) -> int: ...
    def publish_health(self, sources: list[dict]) -> None: ...
    def published_health(self) -> dict | None: ...


class LocalBackend:
    """An in-memory queue of chunks; a lock makes pop atomic between threads."""

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._health: dict | None = None

    def push(self, chunk: Chunk) -> None:
        with self._lock:
            self._chunks.append(chunk)
            self._bytes += len(chunk.data)

    def push_front(self, chunk: Chunk) -> None:
        with self._lock:
            self._chunks.appendleft(chunk)
            self._bytes += len(chunk.data)

    def pop(self) -> Chunk | None:
        with self._lock:
            if not self._chunks:
                return None
            chunk = self._chunks.popleft()
            self._bytes -= len(chunk.data)
            return chunk

    def level(self) -> int:
        return self._bytes

    def clear(self) -> int:
        with self._lock:
            dropped = self._bytes
            self._chunks.clear()
            self._bytes = 0
            return dropped

    def publish_health(self, sources: list[dict]) -> None:
        self._health = {"sources": sources, "published_at": time.time()}

    def published_health(self) -> dict | None:
        return self._health


# The byte counter counts entropy bytes only: item length minus the 2-byte length and the header.
_PUSH = """
redis.call(ARGV[2], KEYS[1], ARGV[1])
return redis.call('INCRBY', KEYS[2], ARGV[3])
"""
_POP = """
local value = redis.call('LPOP', KEYS[1])
if value then
  local header = string.byte(value, 1) * 256 + string.byte(value, 2)
  redis.call('DECRBY', KEYS[2], string.len(value) - 2 - header)
end
return value
"""
_CLEAR = """
local level = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('DEL', KEYS[1], KEYS[2])
return level
"""


class RedisBackend:
    """Chunks in a Redis list; push and pop are Lua scripts, so the list and its byte counter stay in step and
    a chunk is popped by exactly one client, whichever process it runs in.

    Each list item is ``<2-byte header length><provenance JSON><entropy bytes>``. Entropy in Redis is as
    secret as in process memory: use a Redis reachable only by the portal (and TLS/ACLs where it is remote).
    """

    def __init__(self, client, key: str = "qrng:pool"):
        self.client = client
        self.key = key
        self._keys = [key + ":chunks", key + ":bytes"]
        self._push = client.register_script(_PUSH)
        self._pop = client.register_script(_POP)
        self._clear = client.register_script(_CLEAR)

    @staticmethod
    def _encode(chunk: Chunk) -> bytes:
        header = json.dumps(chunk.provenance.as_dict(), separators=(",", ":")).encode()
        return struct.pack(">H", len(header)) + header + chunk.data

    @staticmethod
    def _decode(value: bytes) -> Chunk:
        (length,) = struct.unpack(">H", value[:2])
        provenance = Provenance(**json.loads(value[2 : 2 + length]))
        return Chunk(value[2 + length :], provenance)

    def push(self, chunk: Chunk) -> None:
        self._push(keys=self._keys, args=[self._encode(chunk), "RPUSH", len(chunk.data)])

    def push_front(self, chunk: Chunk) -> None:
        self._push(keys=self._keys, args=[self._encode(chunk), "LPUSH", len(chunk.data)])

    def pop(self) -> Chunk | None:
        value = self._pop(keys=self._keys)
        return None if value is None else self._decode(value)

    def level(self) -> int:
        return int(self.client.get(self._keys[1]) or 0)

    def clear(self) -> int:
        return int(self._clear(keys=self._keys))

    def publish_health(self, sources: list[dict]) -> None:
        """The filler's view of its sources, for web processes that only pop (capabilities endpoint)."""
        self.client.set(self.key + ":health", json.dumps({"sources": sources, "published_at": time.time()}))

    def published_health(self) -> dict | None:
        value = self.client.get(self.key + ":health")
        return json.loads(value) if value else None


class EntropyPool:
    """Health-tested entropy, filled ahead and served once.

    ``read_through``: when the pool is empty, read the missing bytes straight from the (same, health-tested)
    source set instead of waiting for the filler. Either way, if no source can serve, the request fails with
    ``NoHealthyEntropySource`` / ``EntropyPoolEmpty``: there is no other fallback.
    """

    def __init__(
        self,
        sources: SourceSet,
        backend: PoolBackend | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        target_bytes: int = DEFAULT_TARGET_BYTES,
        read_through: bool = True,
    ):
        self.sources = sources
        self.backend = backend or LocalBackend()
        self.chunk_bytes = chunk_bytes
        self.target_bytes = target_bytes
        self.read_through = read_through
        self.last_error: str | None = None
        self._filled = threading.Condition()
        self.drained = threading.Event()  # set on every pop: wakes a PoolFiller at once

    # -- filling ---------------------------------------------------------------------------------------

    def level(self) -> int:
        return self.backend.level()

    def fill(self, max_bytes: int | None = None, max_seconds: float = 30.0) -> int:
        """Top the pool up to ``target_bytes`` (bounded by ``max_bytes`` and time); returns bytes added.

        A failing source stops the fill; the error is kept in ``last_error`` (the source raised its alarm).
        """
        budget = self.target_bytes if max_bytes is None else max_bytes
        deadline = time.monotonic() + max_seconds
        added = 0
        while added < budget and self.backend.level() < self.target_bytes and time.monotonic() < deadline:
            try:
                data, provenance = self.sources.read(min(self.chunk_bytes, budget - added))
            except EntropySourceError as exc:
                self.last_error = str(exc)
                break
            self.backend.push(Chunk(data, provenance))
            added += len(data)
            self.last_error = None
            with self._filled:
                self._filled.notify_all()
        self.backend.publish_health(self.sources.describe())
        return added

    def handle_alarm(self, alarm: Alarm) -> None:
        """Alarm hook: drop everything buffered, so nothing drawn near a failure is served afterwards."""
        self.backend.clear()
        self.backend.publish_health(self.sources.describe())

    def source_health(self) -> list[dict]:
        """Sources with their health: this process's view, or the filler's published one for a source this
        process has not read itself (a web process that only pops from a shared Redis pool)."""
        local = self.sources.describe()
        published = self.backend.published_health() or {}
        by_name = {s["name"]: s for s in published.get("sources", [])}
        merged = []
        for source in local:
            remote = by_name.get(source["name"])
            if source["health"] == "untested" and remote is not None:
                source = {**source, **remote, "published_at": published.get("published_at")}
            merged.append(source)
        return merged

    # -- serving ---------------------------------------------------------------------------------------

    def _next_chunk(self, limit: int, wait: float) -> Chunk:
        """One chunk of at most ``limit`` bytes, popped (or read through); the surplus goes back in front."""
        deadline = time.monotonic() + wait
        chunk = self.backend.pop()
        self.drained.set()
        while chunk is None:
            if self.read_through:
                data, provenance = self.sources.read(min(limit, self.chunk_bytes))  # may raise NoHealthy...
                return Chunk(data, provenance)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = f" ({self.last_error})" if self.last_error else ""
                raise EntropyPoolEmpty(f"the entropy pool is empty{reason}; retry shortly")
            with self._filled:
                self._filled.wait(min(remaining, 0.05))  # bounded: also polls a Redis pool filled elsewhere
            chunk = self.backend.pop()
        if len(chunk.data) > limit:
            self.backend.push_front(Chunk(chunk.data[limit:], chunk.provenance))  # never served: reusable
            chunk = Chunk(chunk.data[:limit], chunk.provenance)
        return chunk

    def take(self, n: int, wait: float = 2.0) -> tuple[bytes, list[Provenance]]:
        """n bytes for one request, with the distinct provenances of the chunks they came from."""
        parts: list[bytes] = []
        provenance: list[Provenance] = []
        have = 0
        while have < n:  # every pass adds at least one byte or raises
            chunk = self._next_chunk(n - have, wait)
            parts.append(chunk.data)
            have += len(chunk.data)
            if chunk.provenance not in provenance:
                provenance.append(chunk.provenance)
        return b"".join(parts), provenance

    def reader(self, wait: float = 2.0):
        """``read(n) -> bytes`` over this pool, for ``qrng.formats`` (provenance kept on the reader)."""
        return PoolReader(self, wait)

    def stream(self, n: int, chunk_bytes: int | None = None, wait: float = 2.0) -> EntropyStream:
        """A large request as a stream of chunks; the first chunk is fetched now, so errors come before
        any response header is sent."""
        return EntropyStream(self, n, chunk_bytes or self.chunk_bytes, wait)

    def describe(self) -> dict:
        return {
            "backend": type(self.backend).__name__,
            "level_bytes": self.level(),
            "target_bytes": self.target_bytes,
            "chunk_bytes": self.chunk_bytes,
            "last_error": self.last_error,
        }


class PoolReader:
    """A ``read(n)`` callable over the pool that counts bytes and collects provenance."""

    def __init__(self, pool: EntropyPool, wait: float):
        self.pool = pool
        self.wait = wait
        self.consumed = 0
        self.provenance: list[Provenance] = []

    def __call__(self, n: int) -> bytes:
        data, provenance = self.pool.take(n, self.wait)
        self.consumed += len(data)
        self.provenance.extend(p for p in provenance if p not in self.provenance)
        return data


class EntropyStream:
    """Iterate to get the bytes of one large request, at most ``chunk_bytes`` at a time.

    Only one chunk is held at a time. ``provenance`` lists where the bytes came from (the first chunk's is
    known before iteration starts); ``bytes_served`` counts what the consumer has taken so far, for metering
    an interrupted download.
    """

    def __init__(self, pool: EntropyPool, n: int, chunk_bytes: int, wait: float):
        if n < 1 or chunk_bytes < 1:
            raise ValueError("a stream needs at least one byte and a positive chunk size")
        self.pool = pool
        self.n = n
        self.chunk_bytes = chunk_bytes
        self.wait = wait
        self.bytes_served = 0
        self._first: Chunk | None = pool._next_chunk(min(n, chunk_bytes), wait)
        self.provenance: list[Provenance] = [self._first.provenance]

    @property
    def simulated(self) -> bool:
        return any(p.simulated for p in self.provenance)

    def __iter__(self) -> Iterator[bytes]:
        while self.bytes_served < self.n:
            if self._first is not None:
                chunk, self._first = self._first, None
            else:
                chunk = self.pool._next_chunk(min(self.n - self.bytes_served, self.chunk_bytes), self.wait)
                if chunk.provenance not in self.provenance:
                    self.provenance.append(chunk.provenance)
            self.bytes_served += len(chunk.data)
            yield chunk.data


class PoolFiller:
    """A background thread keeping the pool between ``low_water`` and ``target_bytes``.

    It wakes when a consumer pops from the pool or every ``interval`` seconds. With ``threads=2`` one thread
    can read the device while the other runs the health tests (see ``HealthTestedSource``); that pays only
    when a core is free (bench/qrng_stream.py compares the variants). Errors do not kill it:
    the failing source has raised its alarm, and the filler retries after ``error_backoff`` seconds (a
    health-failed source stays stopped until an operator resets it).
    """

    def __init__(
        self,
        pool: EntropyPool,
        low_water: int | None = None,
        interval: float = 0.2,
        error_backoff: float = 1.0,
        threads: int = 1,
    ):
        self.pool = pool
        self.low_water = pool.target_bytes // 2 if low_water is None else low_water
        self.interval = interval
        self.error_backoff = error_backoff
        self._stop = threading.Event()
        self._wake = pool.drained
        self._threads = [
            threading.Thread(target=self._run, name=f"qrng-pool-filler-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> PoolFiller:
        for thread in self._threads:
            thread.start()
        return self

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pool.level() < self.low_water:
                added = self.pool.fill(max_seconds=self.interval * 10)
                if added == 0 and self.pool.last_error:
                    self._stop.wait(self.error_backoff)
                continue
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)


__all__ = [
    "Chunk",
    "EntropyPool",
    "EntropyPoolEmpty",
    "EntropyStream",
    "LocalBackend",
    "NoHealthyEntropySource",
    "PoolFiller",
    "PoolReader",
    "RedisBackend",
]
