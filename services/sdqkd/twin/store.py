"""A node's persistent key store (SQLite, WAL): link key blocks, keys awaiting their slave SAEs, and the
in-flight key transfers to and from neighbour KMEs.

Link key ownership: every block of a link is *owned* by one end (blocks alternate). Only the owner hands out
(allocates) bits of its blocks, always sending them towards the other end, which consumes exactly the ranges
named in the transfer. So the two ends never race for the same bits and never need a lock across the link.

Writes that belong together happen in one transaction (``with store.transaction() as tx``). Callers never
await inside a transaction: the store lives on one asyncio loop, so a transaction is atomic for the process
and, with WAL, durable against a process crash (``kill -9``) at every commit.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import private_dir, private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS link_blocks (
    link_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    owner     TEXT NOT NULL,          -- the node that may allocate (send with) these bits
    key       BLOB NOT NULL,
    size      INTEGER NOT NULL,       -- bytes
    used      INTEGER NOT NULL DEFAULT 0,  -- owner: bytes allocated from the front; other end: bytes consumed
    PRIMARY KEY (link_id, seq)
);
CREATE TABLE IF NOT EXISTS key_batches (  -- keys delivered to a master SAE, awaiting dec_keys by slave SAEs here
    batch_id    BLOB PRIMARY KEY,     -- the first 12 bytes of every key ID of the batch (see keyids.py)
    transfer_id TEXT NOT NULL,
    master_sae  TEXT NOT NULL,
    slaves      TEXT NOT NULL,        -- JSON list of the slave SAEs at this node the keys were issued for
    key_bytes   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    keys        BLOB NOT NULL,        -- count * key_bytes
    fetched     TEXT NOT NULL,        -- JSON {slave SAE: hex bitmap of the keys already delivered to it}
    extension   TEXT,
    created     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS key_batches_transfer ON key_batches (transfer_id);
CREATE INDEX IF NOT EXISTS link_blocks_owner ON link_blocks (link_id, owner, seq);
CREATE TABLE IF NOT EXISTS outbox (  -- transfers this node sent on a hop and has not seen confirmed
    transfer_id TEXT PRIMARY KEY,
    next_node   TEXT NOT NULL,
    link_id     TEXT NOT NULL,
    refs        TEXT NOT NULL,
    state       TEXT NOT NULL,        -- 'sending' | 'done' (kept to pass on an abort) | 'aborting' | 'resolving'
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (   -- transfers received on a hop: idempotence, and tombstones of aborted ones
    transfer_id TEXT PRIMARY KEY,
    prev_node   TEXT NOT NULL,
    state       TEXT NOT NULL,        -- 'received' | 'aborted'
    next_node   TEXT,
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

Refs = list[tuple[int, int, int]]  # (block seq, byte offset, byte length) within one link


@dataclass
class StoredBatch:
    master_sae: str
    slaves: list[str]
    key_bytes: int
    count: int
    keys: bytes
    fetched: dict[str, bytearray]  # slave SAE -> bitmap of delivered keys
    extension: Any

    def key(self, index: int) -> bytes:
        return self.keys[index * self.key_bytes : (index + 1) * self.key_bytes]

    def was_fetched(self, sae: str, index: int) -> bool:
        bitmap = self.fetched.get(sae)
        return bitmap is not None and bool(bitmap[index >> 3] & (1 << (index & 7)))

    def mark_fetched(self, sae: str, index: int) -> None:
        bitmap = self.fetched.setdefault(sae, bytearray((self.count + 7) // 8))
        bitmap[index >> 3] |= 1 << (index & 7)

    def complete(self) -> bool:
        full = sum(bin(b).count("1") for bitmap in self.fetched.values() for b in bitmap)
        return full == self.count * len(self.slaves)


class StoreInconsistency(RuntimeError):
    """The two ends of a link disagree about key material (a bug or a lost block)."""


@dataclass
class _Deltas:
    available: dict[tuple[str, bool], int]  # (link, owned by this node) -> bytes
    counters: dict[str, int]


class Transaction:
    """Primitive store operations; only valid inside ``NodeStore.transaction()``."""

    def __init__(self, store: NodeStore):
        self.store = store
        self.db = store.db
        self.deltas = _Deltas(defaultdict(int), defaultdict(int))

    # -- link key material -------------------------------------------------------------------------------
    def _use(self, link_id: str, seq: int, size: int, used: int, nbytes: int) -> None:
        """Mark ``nbytes`` more of a block used; a block used up goes."""
        if used + nbytes >= size:
            self.db.execute("DELETE FROM link_blocks WHERE link_id = ? AND seq = ?", (link_id, seq))
        else:
            self.db.execute(
                "UPDATE link_blocks SET used = used + ? WHERE link_id = ? AND seq = ?", (nbytes, link_id, seq)
            )

    def allocate(self, link_id: str, nbytes: int) -> tuple[bytes, Refs]:
        """Take ``nbytes`` of this node's own key of ``link_id`` (oldest first)."""
        if self.store.available_bytes(link_id) + self.deltas.available[(link_id, True)] < nbytes:
            raise LookupError(f"not enough key on link {link_id}")
        parts: list[bytes] = []
        refs: Refs = []
        need = nbytes
        rows = self.db.execute(
            "SELECT seq, size, used FROM link_blocks WHERE link_id = ? AND owner = ? AND used < size "
            "ORDER BY seq LIMIT ?",
            (link_id, self.store.node_id, 4 + nbytes // 1024),
        )
        for seq, size, used in rows.fetchall():
            take = min(need, size - used)
            (chunk,) = self.db.execute(
                "SELECT substr(key, ?, ?) FROM link_blocks WHERE link_id = ? AND seq = ?",
                (used + 1, take, link_id, seq),
            ).fetchone()
            parts.append(chunk)
            refs.append((seq, used, take))
            self._use(link_id, seq, size, used, take)
            need -= take
            if need == 0:
                break
        if need:
            raise StoreInconsistency(f"link {link_id}: key count and blocks disagree")
        self.deltas.available[(link_id, True)] -= nbytes
        return b"".join(parts), refs

    def consume(self, link_id: str, refs: Refs) -> bytes:
        """Take exactly the ranges the other end allocated (its blocks, our copy)."""
        parts = []
        for seq, offset, length in refs:
            row = self.db.execute(
                "SELECT substr(key, ?, ?), size, used, owner FROM link_blocks WHERE link_id = ? AND seq = ?",
                (offset + 1, length, link_id, seq),
            ).fetchone()
            if row is None or row[3] == self.store.node_id or len(row[0]) != length:
                raise StoreInconsistency(f"link {link_id}: block {seq} missing or not the peer's")
            chunk, size, used, _ = row
            parts.append(chunk)
            self._use(link_id, seq, size, used, length)
            self.deltas.available[(link_id, False)] -= length
        return b"".join(parts)

    def release(self, link_id: str, refs: Refs) -> None:
        """Forget the peer's ranges of an aborted transfer that never reached us (keeps fill honest)."""
        for seq, _offset, length in refs:
            row = self.db.execute(
                "SELECT size, used, owner FROM link_blocks WHERE link_id = ? AND seq = ?", (link_id, seq)
            ).fetchone()
            if row is None or row[2] == self.store.node_id:
                continue
            size, used, _ = row
            self._use(link_id, seq, size, used, length)
            self.deltas.available[(link_id, False)] -= min(length, size - used)

    def drain(self, link_id: str) -> int:
        (total,) = self.db.execute(
            "SELECT COALESCE(SUM(size - used), 0) FROM link_blocks WHERE link_id = ?", (link_id,)
        ).fetchone()
        self.db.execute("DELETE FROM link_blocks WHERE link_id = ?", (link_id,))
        for owned in (True, False):
            self.deltas.available[(link_id, owned)] -= self.store._available[(link_id, owned)]
        return int(total)

    # -- keys awaiting slave SAEs ------------------------------------------------------------------------
    def put_batch(
        self, batch_id: bytes, transfer_id: str, master_sae: str, slaves: list[str], key_bytes: int, keys: bytes,
        extension: Any,
    ) -> None:
        self.db.execute(
            "INSERT INTO key_batches (batch_id, transfer_id, master_sae, slaves, key_bytes, count, keys, fetched, "
            "extension, created) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)",
            (batch_id, transfer_id, master_sae, json.dumps(sorted(slaves)), key_bytes, len(keys) // key_bytes, keys,
             json.dumps(extension) if extension is not None else None, time.time()),
        )

    def get_batches(self, batch_ids: set[bytes]) -> dict[bytes, StoredBatch]:
        out = {}
        for batch_id in batch_ids:
            row = self.db.execute(
                "SELECT master_sae, slaves, key_bytes, count, keys, fetched, extension FROM key_batches "
                "WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
            if row:
                master, slaves, key_bytes, count, keys, fetched, ext = row
                out[batch_id] = StoredBatch(
                    master, json.loads(slaves), key_bytes, count, keys,
                    {sae: bytearray.fromhex(bits) for sae, bits in json.loads(fetched).items()},
                    json.loads(ext) if ext else None,
                )
        return out

    def save_batch(self, batch_id: bytes, batch: StoredBatch) -> None:
        if batch.complete():
            self.db.execute("DELETE FROM key_batches WHERE batch_id = ?", (batch_id,))
        else:
            fetched = json.dumps({sae: bits.hex() for sae, bits in batch.fetched.items()})
            self.db.execute("UPDATE key_batches SET fetched = ? WHERE batch_id = ?", (fetched, batch_id))

    def delete_transfer_keys(self, transfer_id: str) -> int:
        """Delete the keys a transfer stored here; returns how many keys."""
        (count,) = self.db.execute(
            "SELECT COALESCE(SUM(count), 0) FROM key_batches WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        self.db.execute("DELETE FROM key_batches WHERE transfer_id = ?", (transfer_id,))
        return int(count)

    # -- transfers ---------------------------------------------------------------------------------------
    def add_outbox(self, transfer_id: str, next_node: str, link_id: str, refs: Refs) -> None:
        self.db.execute(
            "INSERT INTO outbox (transfer_id, next_node, link_id, refs, state, created) "
            "VALUES (?, ?, ?, ?, 'sending', ?)",
            (transfer_id, next_node, link_id, json.dumps(refs), time.time()),
        )

    def set_outbox_state(self, transfer_id: str, state: str) -> None:
        self.db.execute("UPDATE outbox SET state = ? WHERE transfer_id = ?", (state, transfer_id))

    def mark_done(self, transfer_ids: list[str]) -> None:
        self.db.executemany(
            "UPDATE outbox SET state = 'done' WHERE transfer_id = ? AND state = 'sending'", [(t,) for t in transfer_ids]
        )

    def remove_outbox(self, transfer_id: str) -> None:
        self.db.execute("DELETE FROM outbox WHERE transfer_id = ?", (transfer_id,))

    def inbox_state(self, transfer_id: str) -> tuple[str, str | None] | None:
        return self.store.inbox_state(transfer_id)

    def set_inbox(self, transfer_id: str, prev_node: str, state: str, next_node: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO inbox (transfer_id, prev_node, state, next_node, created) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (transfer_id) DO UPDATE SET state = excluded.state",
            (transfer_id, prev_node, state, next_node, time.time()),
        )

    def bump(self, name: str, amount: int = 1) -> None:
        self.deltas.counters[name] += amount


class NodeStore:
    """One node's SQLite store plus in-memory counters of available key per link (kept in step on commit)."""

    def __init__(self, path: Path, node_id: str):
        self.path = path
        self.node_id = node_id
        # Key material lives here: 0700 directories, a 0600 file (SQLite gives its WAL files the same mode).
        private_file(private_dir(path.parent) / path.name)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: every commit survives a process crash; only an OS crash may lose the last ones.
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(SCHEMA)
        self._available: dict[tuple[str, bool], int] = defaultdict(int)
        for link_id, owner, avail in self.db.execute(
            "SELECT link_id, owner, SUM(size - used) FROM link_blocks GROUP BY link_id, owner"
        ):
            self._available[(link_id, owner == node_id)] = int(avail)
        self.counters: dict[str, int] = defaultdict(int, dict(self.db.execute("SELECT name, value FROM counters")))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = Transaction(self)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield tx
            for name, amount in tx.deltas.counters.items():
                self.db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, amount),
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for key, delta in tx.deltas.available.items():
            self._available[key] += delta
        for name, amount in tx.deltas.counters.items():
            self.counters[name] += amount

    # -- fast reads (no transaction) ---------------------------------------------------------------------
    def available_bytes(self, link_id: str) -> int:
        """Key of ``link_id`` this node may send with."""
        return self._available[(link_id, True)]

    def fill_bytes(self, link_id: str) -> int:
        return self._available[(link_id, True)] + self._available[(link_id, False)]

    def max_seq(self, link_id: str) -> int:
        (seq,) = self.db.execute(
            "SELECT COALESCE(MAX(seq), -1) FROM link_blocks WHERE link_id = ?", (link_id,)
        ).fetchone()
        return int(seq)

    def add_blocks(self, link_id: str, blocks: list[tuple[int, str, bytes]]) -> None:
        """Store blocks (seq, owner, key) of a link in one transaction."""
        with self.transaction():
            for seq, owner, key in blocks:
                self.add_block(link_id, seq, owner, key)

    def add_block(self, link_id: str, seq: int, owner: str, key: bytes) -> None:
        inserted = self.db.execute(
            "INSERT OR IGNORE INTO link_blocks (link_id, seq, owner, key, size) VALUES (?, ?, ?, ?, ?)",
            (link_id, seq, owner, key, len(key)),
        ).rowcount
        if inserted:
            self._available[(link_id, owner == self.node_id)] += len(key)

    def has_block(self, link_id: str, seq: int) -> bool:
        return self.db.execute(
            "SELECT 1 FROM link_blocks WHERE link_id = ? AND seq = ?", (link_id, seq)
        ).fetchone() is not None

    def outbox_to_settle(self) -> list[tuple[str, str, str, Refs, str]]:
        return [
            (tid, nxt, link, [tuple(r) for r in json.loads(refs)], state)
            for tid, nxt, link, refs, state in self.db.execute(
                "SELECT transfer_id, next_node, link_id, refs, state FROM outbox "
                "WHERE state IN ('aborting', 'resolving') LIMIT 100"
            )
        ]

    def recover_after_restart(self) -> int:
        """Transfers not confirmed when the process died are resolved with the next node (see kme.py)."""
        with self.transaction() as tx:
            n = tx.db.execute("UPDATE outbox SET state = 'resolving' WHERE state = 'sending'").rowcount
        self.forget_settled_transfers()
        return n

    def forget_settled_transfers(self, older_than_s: float = 86400.0) -> None:
        """Settled transfers are kept a day (to pass on a late abort, to refuse a late copy), then forgotten."""
        with self.transaction() as tx:
            cutoff = time.time() - older_than_s
            tx.db.execute("DELETE FROM outbox WHERE state = 'done' AND created < ?", (cutoff,))
            tx.db.execute("DELETE FROM inbox WHERE created < ?", (cutoff,))

    def inbox_state(self, transfer_id: str) -> tuple[str, str | None] | None:
        row = self.db.execute("SELECT state, next_node FROM inbox WHERE transfer_id = ?", (transfer_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def has_batch(self, batch_id: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM key_batches WHERE batch_id = ?", (batch_id,)).fetchone() is not None
