"""Key IDs: RFC 9562 UUIDv8 made of a 12-byte batch ID (90 random bits) and a 32-bit index in the batch.

A KME delivers keys in batches (one ``enc_keys`` call, one key stream chunk); every KME holding the batch
derives the key IDs from the batch ID, so a batch is one row in a store, however many keys it has.
"""

from __future__ import annotations

import os
import uuid

BATCH_ID_BYTES = 12


def _stamp(raw: bytes) -> bytes:
    b = bytearray(raw[:BATCH_ID_BYTES])
    b[6] = (b[6] & 0x0F) | 0x80  # version 8
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122/9562 variant
    return bytes(b)


def new_batch_id() -> bytes:
    return _stamp(os.urandom(BATCH_ID_BYTES))


def derived_batch_id(namespace: str, name: str) -> bytes:
    """A batch ID both ends can compute (ETSI 004 chunks: stream ID and index)."""
    return _stamp(uuid.uuid5(uuid.UUID(namespace), name).bytes)


def key_ids(batch_id: bytes, count: int) -> list[str]:
    prefix = batch_id.hex()
    head = f"{prefix[:8]}-{prefix[8:12]}-{prefix[12:16]}-{prefix[16:20]}-{prefix[20:24]}"
    return [f"{head}{i:08x}" for i in range(count)]


def split_key_id(key_id: str) -> tuple[bytes, int]:
    """(batch ID, index) of a key ID; ValueError if it is not a UUID."""
    raw = uuid.UUID(key_id).bytes
    return raw[:BATCH_ID_BYTES], int.from_bytes(raw[BATCH_ID_BYTES:], "big")
