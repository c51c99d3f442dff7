"""Portal key IDs: the key IDs tenants see, sealed references to a delivery record instead of the KME's IDs.

A tenant's key ID is a UUIDv8 (RFC 9562: version digit 8, variant bits 10, so strict UUID validators accept
it). Of its other 122 bits, the first 4 (the ID's first hex digit) name the version of the key-ID secret that
sealed it, modulo 16, in clear; the other 118 are a pseudorandom permutation of ``batch (63 bits) || index (32
bits) || 23 zero bits`` under that version's key: an 8-round Feistel network on two 59-bit halves, each round
function one AES-128 block (``_feistel``; a balanced Feistel network with a PRF round function is a PRP).
``batch`` names the one ``KeyDelivery`` row per request and slave, ``index`` the key's place in it; that row holds
the KME's key IDs. So a delivery of 1024 keys writes one row, not 1024, and ``dec_keys`` finds it by its primary
lookup.

What the seal gives: the IDs reveal nothing but the secret's version (not how many keys a tenant took, nor the
KME's IDs) and cannot be made up: an ID that was not issued opens to a payload whose 23 check bits are not zero
(or, one time in 2**23, to a batch number that names no row of the caller's). It is not what authorises a fetch:
``dec_keys`` still checks the row's tenant, master and slave, so even a correctly opened ID of another tenant
gets the same "not found" as an unknown one.

The keys come from ``KEY_ID_SECRETS`` (``version:secret,...``; required in production, where the sealing version
must not be ``SECRET_KEY``; the embedded default generates one of its own). New IDs are sealed under the highest
version; an ID opens under the version its first digit names, so a rotation (add version n+1, keep n listed
until the IDs sealed under it are fetched) strands no charged key. Versions must differ modulo 16.

Earlier schemes still open, under every listed secret (newest first), so keys charged before an upgrade stay
fetchable: the unversioned UUIDv8 scheme (8-round Feistel on 61-bit halves, 27 check bits, ``_open_v1``) and
before it one AES block of ``batch || index || 4 zero bytes`` (any version digit, ``_open_legacy``).
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
from django.core.exceptions import ImproperlyConfigured

_BLOCK = struct.Struct(">QI4x")  # batch, index, four zero bytes
_ZERO_TAIL = bytes(4)
MAX_BATCH = 2**63 - 1  # a PostgreSQL bigint
VERSION_SLOTS = 16  # the ID's first hex digit: the secret's version modulo 16

_ROUNDS = 8
_HALF = (1 << 59) - 1  # the versioned scheme: two 59-bit halves
_CHECK_BITS = 23
_V1_HALF = (1 << 61) - 1  # the unversioned scheme before it: two 61-bit halves
_V1_CHECK_BITS = 27


@cache
def _key(secret: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=info).derive(secret.encode())


def _cipher(secret: str, info: bytes = b"qxaas portal key IDs v2") -> Cipher:
    # The versioned scheme derives its own key (info v2): a secret listed for both schemes gives unrelated PRPs.
    return Cipher(algorithms.AES(_key(secret, info)), modes.ECB())  # noqa: S305 - one block per round: a PRF


def _v1_cipher(secret: str) -> Cipher:
    return _cipher(secret, b"qxaas portal key IDs v1")


def secrets_by_slot() -> tuple[int, dict[int, str]]:
    """(the sealing version, {version modulo 16: secret}) from ``KEY_ID_SECRETS``."""
    configured: dict[int, str] = settings.KEY_ID_SECRETS
    slots = {version % VERSION_SLOTS: secret for version, secret in configured.items()}
    if not configured or len(slots) != len(configured) or min(configured) < 0 or not all(configured.values()):
        raise ImproperlyConfigured("KEY_ID_SECRETS needs non-empty secrets whose versions (>= 0) differ modulo 16")
    return max(configured), slots


def _newest_first() -> list[str]:
    configured: dict[int, str] = settings.KEY_ID_SECRETS
    return [configured[v] for v in sorted(configured, reverse=True)]


def _round_function(cipher: Cipher, rnd: int, half: np.ndarray, shift: int) -> np.ndarray:
    """F_rnd(half): the first 64 - ``shift`` bits of AES(key, rnd || 7 zero bytes || half), for every element."""
    blocks = np.zeros((len(half), 2), dtype=">u8")
    blocks[:, 0] = rnd << 56
    blocks[:, 1] = half
    encryptor = cipher.encryptor()
    out = np.frombuffer(encryptor.update(blocks.tobytes()) + encryptor.finalize(), dtype=">u8").reshape(-1, 2)
    return (out[:, 0] >> np.uint64(shift)).astype(np.uint64)


def _feistel(cipher: Cipher, left: np.ndarray, right: np.ndarray, *, shift: int = 5,
             decrypt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The permutation on two (64 - ``shift``)-bit halves: 59-bit (versioned scheme) or 61-bit (v1)."""
    if not decrypt:
        for rnd in range(_ROUNDS):
            left, right = right, left ^ _round_function(cipher, rnd, right, shift)
    else:
        for rnd in reversed(range(_ROUNDS)):
            left, right = right ^ _round_function(cipher, rnd, left, shift), left
    return left, right


def _to_uuid_words(high: np.ndarray, low: np.ndarray, low_bits: int) -> bytes:
    """122 payload bits (``high`` || ``low``, ``low`` ``low_bits`` wide) laid out around the version digit (8)
    and the variant bits (10): payload bits 121-74 | 8 | 73-62, then 10 | 61-0."""
    u = np.uint64
    k = 62 - low_bits  # how many of high's bits go into the second word
    first = ((high >> u(k + 12)) << u(16)) | u(0x8000) | ((high >> u(k)) & u(0xFFF))
    second = u(1 << 63) | ((high & u((1 << k) - 1)) << u(low_bits)) | low
    words = np.empty((len(high), 2), dtype=">u8")
    words[:, 0], words[:, 1] = first, second
    return words.tobytes()


def _from_uuid_words(first: np.ndarray, second: np.ndarray, low_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``_to_uuid_words``: (high, low)."""
    u = np.uint64
    k = 62 - low_bits
    high = ((first >> u(16)) << u(k + 12)) | ((first & u(0xFFF)) << u(k)) | ((second >> u(low_bits)) & u((1 << k) - 1))
    return high, second & u((1 << low_bits) - 1)


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
    """The key IDs of keys ``first .. first + count - 1`` of ``batch``, under the newest key-ID secret."""
    version, slots = secrets_by_slot()
    slot = version % VERSION_SLOTS
    u = np.uint64
    index = np.arange(first, first + count, dtype=np.uint64)  # all the keys at once (no Python loop per key)
    # payload = batch (63) || index (32) || check (23 zero bits) = left (59) || right (59)
    left = np.full(count, batch >> 4, dtype=np.uint64)
    right = (u(batch & 15) << u(55)) | (index << u(_CHECK_BITS))
    left, right = _feistel(_cipher(slots[slot]), left, right)
    return _uuid_strings(_to_uuid_words((u(slot) << u(59)) | left, right, 59))


def open_ids(key_ids: list[str]) -> list[tuple[int, int] | None]:
    """``(batch, index)`` for each key ID (validated UUID strings), None for one the portal did not issue."""
    _version, slots = secrets_by_slot()
    u = np.uint64
    blob = bytes.fromhex("".join(key_ids).replace("-", ""))
    words = np.frombuffer(blob, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    first, second = words[:, 0], words[:, 1]
    shaped = (((first >> u(12)) & u(0xF)) == u(8)) & ((second >> u(62)) == u(2))
    high, right = _from_uuid_words(first, second, 59)
    slot, left = high >> u(59), high & u(_HALF)
    opened = np.zeros(len(key_ids), dtype=bool)
    for number, secret in slots.items():  # one Feistel pass per version present (usually one)
        chosen = shaped & (slot == u(number))
        if chosen.any():
            left[chosen], right[chosen] = _feistel(_cipher(secret), left[chosen], right[chosen], decrypt=True)
            opened[chosen] = (right[chosen] & u((1 << _CHECK_BITS) - 1)) == u(0)
    out: list[tuple[int, int] | None] = []
    for i, key_id in enumerate(key_ids):
        if opened[i]:
            out.append(((int(left[i]) << 4) | (int(right[i]) >> 55), (int(right[i]) >> _CHECK_BITS) & 0xFFFFFFFF))
        else:
            out.append(_open_earlier(key_id, bool(shaped[i])))
    return out


def _open_earlier(key_id: str, shaped: bool) -> tuple[int, int] | None:
    """An ID sealed before versions were in the ID, under any listed secret (newest first)."""
    for secret in _newest_first():
        opened = (_open_v1(key_id, secret) if shaped else None) or _open_legacy(key_id, secret)
        if opened is not None:
            return opened
    return None


def _open_v1(key_id: str, secret: str) -> tuple[int, int] | None:
    """The unversioned UUIDv8 scheme: batch (63) || index (32) || 27 zero bits on two 61-bit halves."""
    words = np.frombuffer(bytes.fromhex(key_id.replace("-", "")), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    left, right = _from_uuid_words(words[:, 0], words[:, 1], 61)
    left, right = _feistel(_v1_cipher(secret), left, right, shift=3, decrypt=True)
    r = int(right[0])
    if r & ((1 << _V1_CHECK_BITS) - 1):
        return None
    return (int(left[0]) << 2) | (r >> 59), (r >> _V1_CHECK_BITS) & 0xFFFFFFFF


def _open_legacy(key_id: str, secret: str) -> tuple[int, int] | None:
    """The scheme before UUIDv8: one AES block of ``batch || index || 4 zero bytes``."""
    decryptor = _v1_cipher(secret).decryptor()
    block = decryptor.update(bytes.fromhex(key_id.replace("-", ""))) + decryptor.finalize()
    if block[12:] != _ZERO_TAIL:
        return None
    return _BLOCK.unpack(block)


def seal_v1(batch: int, index: int) -> str:
    """An ID as the unversioned UUIDv8 scheme sealed it, under the newest secret (tests of the upgrade path)."""
    u = np.uint64
    left = np.array([batch >> 2], dtype=np.uint64)
    right = np.array([(u(batch & 3) << u(59)) | (u(index) << u(_V1_CHECK_BITS))], dtype=np.uint64)
    left, right = _feistel(_v1_cipher(_newest_first()[0]), left, right, shift=3)
    return _uuid_strings(_to_uuid_words(left, right, 61))[0]


def seal_legacy(batch: int, index: int) -> str:
    """An ID as the one-block scheme sealed it, under the newest secret (tests of the upgrade path only)."""
    encryptor = _v1_cipher(_newest_first()[0]).encryptor()
    return _uuid_strings(encryptor.update(_BLOCK.pack(batch, index)) + encryptor.finalize())[0]


def pack_backend_ids(joined: str) -> bytes:
    """The KME's key IDs (validated UUID strings joined by commas) as 16 bytes each, for the delivery row."""
    return bytes.fromhex(joined.replace("-", "").replace(",", ""))


def backend_id(packed: bytes, index: int) -> str:
    """The KME's key ID at ``index`` of a delivery row's packed IDs."""
    return _uuid_strings(bytes(packed[16 * index:16 * index + 16]))[0]
