"""Entropy formats researchers use, built from a byte stream, each reporting the entropy bytes it consumed.

Every function takes ``read(n) -> bytes`` (a pool, a source set, a test buffer) and returns a ``Formatted``
(value, consumed bytes). Quota counts consumed bytes, which include rejected draws (integers) and discarded
halves (an odd count of normal deviates): those bytes left the pool and are never served again.

- raw, hex, base64 (and streaming encoders for large responses);
- arrays of uint8/16/32/64 (little-endian);
- unbiased integers in [low, high]: Lemire's multiply-shift with rejection, vectorised, never ``x % n``;
- float64 uniform in [0, 1) from 53 bits: ``(x >> 11) * 2**-53``;
- normal deviates by Box-Muller from two uniform doubles (16 bytes per pair of deviates);
- a ``seed``: a 128- or 256-bit integer for ``numpy.random.SeedSequence``;
- the ANU QRNG compatibility shape ``{type, length, data, success}``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Reader = Callable[[int], bytes]

MAX_REQUEST_BYTES = 512 * 1024  # one non-streamed request: a cap on one JSON/text body
MAX_STREAM_BYTES = 1 << 30  # one streamed raw/hex/base64 request
MAX_COUNT = 65536  # numbers in one array response
ANU_MAX_LENGTH = 1024
ANU_MAX_SIZE = 1024
ANU_TYPES = ("uint8", "uint16", "hex8", "hex16")
SEED_BITS = (128, 256)
_MAX_REJECTION_ROUNDS = 200  # acceptance >= 1/2 per draw: 200 rounds never run out in practice


class FormatError(ValueError):
    """A request parameter is out of range (the API answers 400)."""


@dataclass(frozen=True)
class Formatted:
    value: Any
    consumed: int  # entropy bytes taken from the stream, the quota unit

    def json_value(self) -> Any:
        """The value in a JSON-able form (arrays as lists, big integers as strings are left to the caller)."""
        return self.value.tolist() if isinstance(self.value, np.ndarray) else self.value


def _check_count(count: int, maximum: int = MAX_COUNT, what: str = "count") -> None:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= maximum:
        raise FormatError(f"{what} must be an integer in [1, {maximum}], got {count!r}")


def _read_exact(read: Reader, n: int) -> bytes:
    data = read(n)
    if len(data) != n:
        raise RuntimeError(f"entropy reader returned {len(data)} bytes instead of {n}")
    return data


# -- bytes and text ----------------------------------------------------------------------------------------


def raw_bytes(read: Reader, n: int) -> Formatted:
    _check_count(n, MAX_REQUEST_BYTES, "bytes")
    return Formatted(_read_exact(read, n), n)


def hex_string(read: Reader, n: int) -> Formatted:
    _check_count(n, MAX_REQUEST_BYTES, "bytes")
    return Formatted(_read_exact(read, n).hex(), n)


def base64_string(read: Reader, n: int) -> Formatted:
    _check_count(n, MAX_REQUEST_BYTES, "bytes")
    return Formatted(base64.b64encode(_read_exact(read, n)).decode("ascii"), n)


STREAM_ENCODINGS = ("raw", "hex", "base64")


def encode_stream(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """Encode a stream of byte chunks chunk by chunk, never holding more than one chunk (plus 2 bytes)."""
    if encoding == "raw":
        yield from chunks
    elif encoding == "hex":
        for chunk in chunks:
            yield chunk.hex().encode("ascii")
    elif encoding == "base64":
        carry = b""  # base64 pieces concatenate only at multiples of 3 bytes
        for chunk in chunks:
            data = carry + chunk
            cut = len(data) - len(data) % 3
            carry = data[cut:]
            if cut:
                yield base64.b64encode(data[:cut])
        if carry:
            yield base64.b64encode(carry)
    else:
        raise FormatError(f"streamed encoding must be one of {STREAM_ENCODINGS}, got {encoding!r}")


# -- numbers -----------------------------------------------------------------------------------------------

UINT_BITS = (8, 16, 32, 64)


def uint_array(read: Reader, count: int, bits: int = 8) -> Formatted:
    """``count`` unsigned integers of ``bits`` bits (little-endian words of the stream)."""
    _check_count(count)
    if bits not in UINT_BITS:
        raise FormatError(f"bits must be one of {UINT_BITS}, got {bits!r}")
    n = count * bits // 8
    values = np.frombuffer(_read_exact(read, n), dtype=np.dtype(f"<u{bits // 8}")).astype(f"u{bits // 8}")
    return Formatted(values, n)


_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _mul_64x64(x: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of the 128-bit products x * s, vectorised with 32-bit limbs."""
    sh, sl = np.uint64(s >> 32), np.uint64(s & 0xFFFFFFFF)
    xh, xl = x >> _S32, x & _M32
    ll, lh, hl, hh = xl * sl, xl * sh, xh * sl, xh * sh  # each < 2^64: no wrap-around
    mid = (ll >> _S32) + (lh & _M32) + (hl & _M32)  # < 3 * 2^32
    low = (ll & _M32) | ((mid & _M32) << _S32)
    high = hh + (lh >> _S32) + (hl >> _S32) + (mid >> _S32)
    return high, low


def _lemire_batch(words: np.ndarray, s: int, word_bits: int) -> np.ndarray:
    """Lemire's multiply-shift: offsets in [0, s) for the accepted words, in order; rejected words dropped.

    For a w-bit word x, ``m = x * s``; the offset is ``m >> w`` and the draw is rejected when
    ``m mod 2^w < (2^w - s) mod s``, which removes exactly the surplus that would bias small offsets.
    """
    threshold = (2**word_bits - s) % s
    if word_bits == 32:
        m = words * np.uint64(s)  # < 2^64 since x < 2^32 and s <= 2^32
        high, low = m >> _S32, m & _M32
    else:
        high, low = _mul_64x64(words, s)
    return high[low >= np.uint64(threshold)]


def integers(read: Reader, count: int, low: int, high: int) -> Formatted:
    """``count`` integers uniform in [low, high] (both within int64), without modulo bias.

    Ranges up to 2^32 values use 32-bit draws, wider ranges 64-bit draws. Rejected draws are replaced by
    drawing exactly the missing number of words again (bounded rounds); every word drawn is counted.
    """
    _check_count(count)
    for name, value in (("min", low), ("max", high)):
        if not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise FormatError(f"{name} must be an integer within int64, got {value!r}")
    if low > high:
        raise FormatError(f"min ({low}) must not exceed max ({high})")
    s = high - low + 1
    base = np.uint64(low % 2**64)  # two's complement: adding offsets with wrap-around gives low + offset
    if s == 2**64:  # the whole int64 range: every word is a value, nothing to reject
        words = np.frombuffer(_read_exact(read, 8 * count), dtype="<u8")
        return Formatted((words + base).view(np.int64), 8 * count)
    word_bits = 32 if s <= 2**32 else 64
    word_bytes = word_bits // 8
    dtype = np.dtype(f"<u{word_bytes}")
    accepted: list[np.ndarray] = []
    have = 0
    consumed = 0
    for _ in range(_MAX_REJECTION_ROUNDS):
        missing = count - have
        if missing == 0:
            break
        words = np.frombuffer(_read_exact(read, missing * word_bytes), dtype=dtype).astype(np.uint64)
        consumed += missing * word_bytes
        offsets = _lemire_batch(words, s, word_bits)
        accepted.append(offsets)
        have += len(offsets)
    else:
        raise RuntimeError("rejection sampling did not finish: is the entropy stream constant?")
    offsets = np.concatenate(accepted)
    return Formatted((offsets + base).view(np.int64), consumed)


def uniform_floats(read: Reader, count: int) -> Formatted:
    """float64 uniform in [0, 1) from the top 53 bits of 64-bit words: ``(x >> 11) * 2**-53``."""
    _check_count(count)
    words = np.frombuffer(_read_exact(read, 8 * count), dtype="<u8")
    return Formatted((words >> np.uint64(11)).astype(np.float64) * 2.0**-53, 8 * count)


def normal_deviates(read: Reader, count: int, mean: float = 0.0, stddev: float = 1.0) -> Formatted:
    """Normal deviates by the Box-Muller transform of pairs of 53-bit uniform doubles.

    ``u1 = 1 - U1`` lies in (0, 1], so ``log(u1)`` is finite; each pair of uniforms (16 bytes) gives two
    independent deviates ``r cos(2 pi u2)`` and ``r sin(2 pi u2)`` with ``r = sqrt(-2 log u1)``. An odd count
    discards the last deviate; its bytes still count. The tails reach |z| <= sqrt(-2 log 2^-53) = 8.57.
    """
    _check_count(count)
    if not stddev > 0:
        raise FormatError(f"stddev must be positive, got {stddev!r}")
    pairs = -(-count // 2)
    words = np.frombuffer(_read_exact(read, 16 * pairs), dtype="<u8")
    u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1, u2 = 1.0 - u[:pairs], u[pairs:]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:count]
    return Formatted(mean + stddev * z, 16 * pairs)


def seed(read: Reader, bits: int = 256) -> Formatted:
    """A 128- or 256-bit integer, e.g. for ``numpy.random.SeedSequence(entropy=...)``."""
    if bits not in SEED_BITS:
        raise FormatError(f"seed bits must be one of {SEED_BITS}, got {bits!r}")
    n = bits // 8
    return Formatted(int.from_bytes(_read_exact(read, n), "big"), n)


# -- ANU QRNG compatibility --------------------------------------------------------------------------------


def anu(read: Reader, length: int, type: str = "uint8", size: int = 1) -> Formatted:
    """The ANU QRNG shape: ``?length=&type=uint8|uint16|hex8|hex16&size=`` -> ``{type, length, data, ...}``.

    uint8: ``length`` integers 0..255; uint16: ``length`` integers 0..65535 (big-endian pairs); hex8 / hex16:
    ``length`` hex strings of ``size`` bytes each (2 * size hex digits; the legacy ANU API answered
    ``type=hex16&size=2`` with strings such as ``"46db"``).
    """
    if type not in ANU_TYPES:
        raise FormatError(f"type must be one of {ANU_TYPES}, got {type!r}")
    _check_count(length, ANU_MAX_LENGTH, "length")
    if type == "uint8":
        data = list(_read_exact(read, length))
        consumed = length
    elif type == "uint16":
        consumed = 2 * length
        data = np.frombuffer(_read_exact(read, consumed), dtype=">u2").tolist()
    else:
        _check_count(size, ANU_MAX_SIZE, "size")
        consumed = length * size
        raw = _read_exact(read, consumed)
        data = [raw[i * size : (i + 1) * size].hex() for i in range(length)]
    body: dict[str, Any] = {"type": type, "length": length, "data": data, "success": True}
    if type.startswith("hex"):
        body["size"] = size
    return Formatted(body, consumed)


def anu_error(message: str) -> dict:
    """An ANU-shaped failure body (``success: false``), for 4xx/5xx answers on the compatibility endpoint."""
    return {"success": False, "message": message}


# -- one entry point for the API ---------------------------------------------------------------------------

FORMATS = ("raw", "hex", "base64", "uint8", "uint16", "uint32", "uint64", "int", "float", "normal", "seed")


def render(format: str, read: Reader, params: dict[str, Any]) -> Formatted:
    """Dispatch a request's ``format`` and parameters (already parsed to int/float) to the right function."""
    if format in ("raw", "hex", "base64"):
        fn = {"raw": raw_bytes, "hex": hex_string, "base64": base64_string}[format]
        return fn(read, params.get("bytes", 32))
    if format.startswith("uint") and format[4:].isdigit():
        return uint_array(read, params.get("count", 1), int(format[4:]))
    if format == "int":
        if "min" not in params or "max" not in params:
            raise FormatError("format=int needs min and max")
        return integers(read, params.get("count", 1), params["min"], params["max"])
    if format == "float":
        return uniform_floats(read, params.get("count", 1))
    if format == "normal":
        mean, stddev = params.get("mean", 0.0), params.get("stddev", 1.0)
        return normal_deviates(read, params.get("count", 1), mean, stddev)
    if format == "seed":
        return seed(read, params.get("bits", 256))
    raise FormatError(f"format must be one of {FORMATS}, got {format!r}")


def minimum_consumption(format: str, params: dict[str, Any]) -> int:
    """Entropy bytes a request will consume at least (exactly, except ``int``, whose rejected draws add more).

    For a quota pre-check before anything is drawn. Parameters are validated by ``render`` (this returns 1
    for anything it cannot size, so a bad request still reaches ``render`` and its 400).
    """
    count = params.get("count", 1)
    if not isinstance(count, int) or count < 1:
        return 1
    if format in ("raw", "hex", "base64"):
        n = params.get("bytes", 32)
        return n if isinstance(n, int) and n >= 1 else 1
    if format.startswith("uint") and format[4:] in ("8", "16", "32", "64"):
        return count * int(format[4:]) // 8
    if format == "int":
        low, high = params.get("min"), params.get("max")
        if isinstance(low, int) and isinstance(high, int) and high >= low:
            return count * (4 if high - low + 1 <= 2**32 else 8)
        return 1
    if format == "float":
        return 8 * count
    if format == "normal":
        return 16 * -(-count // 2)
    if format == "seed":
        bits = params.get("bits", 256)
        return bits // 8 if bits in SEED_BITS else 1
    return 1


def anu_consumption(length: int, type: str, size: int = 1) -> int:
    """Entropy bytes of an ANU-shaped request (exact)."""
    return {"uint8": length, "uint16": 2 * length}.get(type, length * size)


def describe_formats() -> dict:
    """Formats and limits, for the capabilities endpoint."""
    return {
        "formats": list(FORMATS),
        "streamed_encodings": list(STREAM_ENCODINGS),
        "max_request_bytes": MAX_REQUEST_BYTES,
        "max_stream_bytes": MAX_STREAM_BYTES,
        "max_count": MAX_COUNT,
        "seed_bits": list(SEED_BITS),
        "integers": "Lemire multiply-shift with rejection (no modulo bias); rejected draws count as consumed",
        "float": "(x >> 11) * 2**-53 from 64-bit words, uniform in [0, 1)",
        "normal": "Box-Muller from pairs of 53-bit uniforms",
        "anu": {"types": list(ANU_TYPES), "max_length": ANU_MAX_LENGTH, "max_size": ANU_MAX_SIZE},
    }
