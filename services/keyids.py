"""Portal key IDs: the key IDs tenants see, sealed references to a delivery record instead of the KME's IDs.

A tenant's key ID is AES-128 (one block, a pseudorandom permutation) of ``batch (8 bytes) || index (4 bytes)
|| 4 zero bytes`` under the portal's key-ID key, written in UUID form (8-4-4-4-12 hex digits; all 128 bits are
cipher output, so the version and variant digits are arbitrary, which ETSI GS QKD 014's "UUID format" and the
usual UUID parsers accept). ``batch`` names the one ``KeyDelivery`` row per request and slave, ``index`` the
key's place in it; that row holds the KME's key IDs. So a delivery of 1024 keys writes one row, not 1024,
and ``dec_keys`` finds it by its primary lookup.

What the seal gives: the IDs reveal nothing (not how many keys a tenant took, nor the KME's IDs) and cannot
be made up: an ID that was not issued opens to a block whose last four bytes are not zero (or, one time in
2**32, to a batch number that names no row of the caller's). It is not what authorises a fetch: ``dec_keys``
still checks the row's tenant, master and slave, so even a correctly opened ID of another tenant gets the
same "not found" as an unknown one.

The key comes from ``KEY_ID_SECRET`` (default: derived from ``SECRET_KEY``). Changing it makes the key IDs
already handed out unknown: a slave can no longer fetch a key its master took before the change.
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


_PLAIN = np.dtype([("batch", ">u8"), ("index", ">u4"), ("zero", ">u4")])  # the layout of _BLOCK


def seal(batch: int, count: int, first: int = 0) -> list[str]:
    """The key IDs of keys ``first .. first + count - 1`` of ``batch``."""
    blocks = np.zeros(count, dtype=_PLAIN)  # all the blocks at once (a struct.pack per key cost ~1 us)
    blocks["batch"] = batch
    blocks["index"] = np.arange(first, first + count, dtype=np.uint32)
    plain = blocks.tobytes()
    encryptor = _cipher().encryptor()
    return _uuid_strings(encryptor.update(plain) + encryptor.finalize())


def open_ids(key_ids: list[str]) -> list[tuple[int, int] | None]:
    """``(batch, index)`` for each key ID (validated UUID strings), None for one the portal did not issue."""
    blob = bytes.fromhex("".join(key_ids).replace("-", ""))
    decryptor = _cipher().decryptor()
    plain = decryptor.update(blob) + decryptor.finalize()
    out: list[tuple[int, int] | None] = []
    for i in range(0, len(plain), 16):
        block = plain[i:i + 16]
        if block[12:] != _ZERO_TAIL:
            out.append(None)
        else:
            batch, index = _BLOCK.unpack(block)
            out.append((batch, index))
    return out


def pack_backend_ids(joined: str) -> bytes:
    """The KME's key IDs (validated UUID strings joined by commas) as 16 bytes each, for the delivery row."""
    return bytes.fromhex(joined.replace("-", "").replace(",", ""))


def backend_id(packed: bytes, index: int) -> str:
    """The KME's key ID at ``index`` of a delivery row's packed IDs."""
    return _uuid_strings(bytes(packed[16 * index:16 * index + 16]))[0]
