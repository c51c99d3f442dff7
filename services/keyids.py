"""Portal key IDs: the key IDs tenants see, sealed references to a delivery record instead of the KME's IDs.

A tenant's key ID is a UUIDv8 (RFC 9562: version digit 8, variant bits 10, so strict UUID validators accept
it) whose other 122 bits are a pseudorandom permutation of ``batch (63 bits) || index (32 bits) || 27 zero
bits`` under the portal's key-ID key: an 8-round Feistel network on two 61-bit halves, each round function one
AES-128 block (``_feistel``; a balanced Feistel network with a PRF round function is a PRP). ``batch`` names
the one ``KeyDelivery`` row per request and slave, ``index`` the
key's place in it; that row holds the KME's key IDs. So a delivery of 1024 keys writes one row, not 1024,
and ``dec_keys`` finds it by its primary lookup.

What the seal gives: the IDs reveal nothing (not how many keys a tenant took, nor the KME's IDs) and cannot
be made up: an ID that was not issued opens to a payload whose 27 check bits are not zero (or, one time in
2**27, to a batch number that names no row of the caller's). It is not what authorises a fetch: ``dec_keys``
still checks the row's tenant, master and slave, so even a correctly opened ID of another tenant gets the
same "not found" as an unknown one.

The key comes from ``KEY_ID_SECRET`` (default: derived from ``SECRET_KEY``). Changing it makes the key IDs
already handed out unknown: a slave can no longer fetch a key its master took before the change. IDs sealed by
the earlier scheme (one AES block, any version digit) still open, so keys charged before an upgrade stay
fetchable.
"""

from __future__ import annotations

import secrets
import struct
from functools import cache

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

_BLOCK = struct.Struct(">QI4x")  # batch, index, four zero bytes
_ZERO_TAIL = bytes(4)
MAX_BATCH = 2**63 - 1  # a PostgreSQL bigint


@cache
def _key(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"qxaas portal key IDs v1").derive(
        secret.encode())


def _cipher() -> Cipher:
    secret = getattr(settings, "KEY_ID_SECRET", "") or settings.SECRET_KEY
    return Cipher(algorithms.AES(_key(secret)), modes.ECB())  # noqa: S305 - one block per ID: a PRP, not a mode


_ROUNDS = 8
_HALF = (1 << 61) - 1
_CHECK_BITS = 27


def _round_function(cipher: Cipher, rnd: int, half: np.ndarray) -> np.ndarray:
    """F_rnd(half): the first 61 bits of AES(key, rnd || 7 zero bytes || half), for every element at once."""
    blocks = np.zeros((len(half), 2), dtype=">u8")
    blocks[:, 0] = rnd << 56
    blocks[:, 1] = half
    encryptor = cipher.encryptor()
    out = np.frombuffer(encryptor.update(blocks.tobytes()) + encryptor.finalize(), dtype=">u8").reshape(-1, 2)
    return (out[:, 0] >> np.uint64(3)).astype(np.uint64)


def _feistel(left: np.ndarray, right: np.ndarray, *, decrypt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    cipher = _cipher()
    if not decrypt:
        for rnd in range(_ROUNDS):
            left, right = right, left ^ _round_function(cipher, rnd, right)
    else:
        for rnd in reversed(range(_ROUNDS)):
            left, right = right ^ _round_function(cipher, rnd, left), left
    return left, right


def _to_uuid_words(left: np.ndarray, right: np.ndarray) -> bytes:
    """122 payload bits (left || right, 61 bits each) laid out around the version and variant bits."""
    u = np.uint64
    first = ((left >> u(13)) << u(16)) | u(0x8000) | ((left >> u(1)) & u(0xFFF))
    second = u(1 << 63) | ((left & u(1)) << u(61)) | right
    words = np.empty((len(left), 2), dtype=">u8")
    words[:, 0], words[:, 1] = first, second
    return words.tobytes()


def new_batch() -> int:
    """A fresh batch number (random: nothing to read from the database before the keys are handed out)."""
    return secrets.randbelow(MAX_BATCH) + 1


def _uuid_strings(blob: bytes) -> list[str]:
    """16-byte blocks in UUID form, the dashes put in with numpy (an f-string per key cost ~1 us)."""
    n = len(blob) // 16
    digits = np.frombuffer(blob.hex().encode(), dtype="S1").reshape(n, 32)
    out = np.full((n, 36), b"-", dtype="S1")
    for dst, src in (((0, 8), (0, 8)), ((9, 13), (8, 12)), ((14, 18), (12, 16)), ((19, 23), (16, 20)),
                     ((24, 36), (20, 32))):
        out[:, dst[0]:dst[1]] = digits[:, src[0]:src[1]]
    text = out.tobytes().decode()
    return [text[i:i + 36] for i in range(0, 36 * n, 36)]




def seal(batch: int, count: int, first: int = 0) -> list[str]:
    """The key IDs of keys ``first .. first + count - 1`` of ``batch``."""
    u = np.uint64
    index = np.arange(first, first + count, dtype=np.uint64)  # all the keys at once (no Python loop per key)
    # payload = batch (63) || index (32) || check (27 zero bits) = left (61) || right (61)
    left = np.full(count, batch >> 2, dtype=np.uint64)
    right = (u(batch & 3) << u(59)) | (index << u(_CHECK_BITS))
    return _uuid_strings(_to_uuid_words(*_feistel(left, right)))


def open_ids(key_ids: list[str]) -> list[tuple[int, int] | None]:
    """``(batch, index)`` for each key ID (validated UUID strings), None for one the portal did not issue."""
    u = np.uint64
    blob = bytes.fromhex("".join(key_ids).replace("-", ""))
    words = np.frombuffer(blob, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    first, second = words[:, 0], words[:, 1]
    left = ((first >> u(16)) << u(13)) | ((first & u(0xFFF)) << u(1)) | ((second >> u(61)) & u(1))
    left, right = _feistel(left, second & u(_HALF), decrypt=True)
    shaped = ((first >> u(12)) & u(0xF)) == u(8)
    shaped &= (second >> u(62)) == u(2)
    out: list[tuple[int, int] | None] = []
    for i, key_id in enumerate(key_ids):
        if shaped[i] and int(right[i]) & ((1 << _CHECK_BITS) - 1) == 0:
            out.append(((int(left[i]) << 2) | (int(right[i]) >> 59), (int(right[i]) >> _CHECK_BITS) & 0xFFFFFFFF))
        else:
            out.append(_open_legacy(key_id))
    return out


def _open_legacy(key_id: str) -> tuple[int, int] | None:
    """An ID sealed by the earlier scheme: one AES block of ``batch || index || 4 zero bytes``."""
    decryptor = _cipher().decryptor()
    block = decryptor.update(bytes.fromhex(key_id.replace("-", ""))) + decryptor.finalize()
    if block[12:] != _ZERO_TAIL:
        return None
    return _BLOCK.unpack(block)


def seal_legacy(batch: int, index: int) -> str:
    """An ID as the earlier scheme sealed it (tests of the upgrade path only)."""
    encryptor = _cipher().encryptor()
    return _uuid_strings(encryptor.update(_BLOCK.pack(batch, index)) + encryptor.finalize())[0]


def pack_backend_ids(joined: str) -> bytes:
    """The KME's key IDs (validated UUID strings joined by commas) as 16 bytes each, for the delivery row."""
    return bytes.fromhex(joined.replace("-", "").replace(",", ""))


def backend_id(packed: bytes, index: int) -> str:
    """The KME's key ID at ``index`` of a delivery row's packed IDs."""
    return _uuid_strings(bytes(packed[16 * index:16 * index + 16]))[0]
