"""Entropy formats: exact consumption, unbiased integers (chi-square), floats in [0, 1), encodings, ANU shape.

The chi-square p-values come from ``qrng.quality.chi2_sf`` (the project's own regularised incomplete gamma,
checked against closed forms in test_quality.py); scipy is not used.
"""

import base64

import numpy as np
import pytest

from qrng import formats
from qrng.formats import FormatError
from qrng.quality import chi2_sf


class StreamReader:
    """A deterministic byte stream that counts what was read (stands in for the pool)."""

    def __init__(self, seed=1, constant=None):
        self.rng = np.random.default_rng(seed)
        self.constant = constant
        self.total = 0

    def __call__(self, n):
        self.total += n
        return bytes([self.constant]) * n if self.constant is not None else self.rng.bytes(n)


def chi_square(values, low, bucket_width, buckets):
    counts = np.bincount(((values - low) // bucket_width).astype(np.int64), minlength=buckets)
    assert len(counts) == buckets
    expected = len(values) / buckets
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return chi2_sf(statistic, buckets - 1)


def test_raw_hex_base64_consume_what_they_return():
    reader = StreamReader()
    raw = formats.raw_bytes(reader, 1000)
    assert len(raw.value) == raw.consumed == 1000
    assert len(bytes.fromhex(formats.hex_string(reader, 33).value)) == 33
    assert len(base64.b64decode(formats.base64_string(reader, 31).value)) == 31
    assert reader.total == 1000 + 33 + 31
    with pytest.raises(FormatError):
        formats.raw_bytes(reader, formats.MAX_REQUEST_BYTES + 1)
    with pytest.raises(FormatError):
        formats.raw_bytes(reader, 0)


def test_uint_arrays_are_little_endian_words():
    data = bytes(range(16))
    assert formats.uint_array(lambda n: data[:n], 8, 16).value.tolist()[0] == 0x0100
    assert formats.uint_array(lambda n: data[:n], 2, 64).value.tolist()[1] == int.from_bytes(
        data[8:], "little"
    )
    result = formats.uint_array(StreamReader(), 1000, 32)
    assert result.value.dtype == np.uint32 and result.consumed == 4000
    with pytest.raises(FormatError):
        formats.uint_array(StreamReader(), 10, 12)


@pytest.mark.parametrize(
    ("low", "high"), [(0, 1), (-3, 3), (1, 6), (-(2**63), 2**63 - 1), (2**63 - 5, 2**63 - 1)]
)
def test_integers_cover_the_closed_range(low, high):
    result = formats.integers(StreamReader(), 5000, low, high)
    assert result.value.dtype == np.int64
    values = [int(v) for v in result.value]
    assert min(values) >= low and max(values) <= high
    if high - low < 100:
        assert set(values) == set(range(low, high + 1))  # both ends reachable


def test_dice_are_fair():
    result = formats.integers(StreamReader(seed=2), 60_000, 1, 6)
    assert chi_square(result.value, 1, 1, 6) > 1e-4


def test_wide_32_bit_range_is_unbiased_where_modulo_would_not_be():
    # s = 3 * 2^30: x % s would make [0, 2^30) twice as likely as the rest. Twelve buckets of 2^28 values.
    s = 3 * 2**30
    result = formats.integers(StreamReader(seed=3), 60_000, 0, s - 1)
    assert chi_square(result.value, 0, 2**28, 12) > 1e-4
    # The same test has the power to see modulo bias: it must reject ``x % s`` on the same kind of words.
    words = np.frombuffer(StreamReader(seed=3)(4 * 60_000), dtype="<u4").astype(np.int64)
    assert chi_square(words % s, 0, 2**28, 12) < 1e-12


def test_wide_64_bit_range_is_unbiased():
    s = 3 * 2**62  # 64-bit draws; modulo would double the first third
    low = -(2**63)
    result = formats.integers(StreamReader(seed=4), 60_000, low, low + s - 1)
    offsets = result.value.astype(object) - low  # exact Python ints
    assert chi_square(np.array(offsets, dtype=object), 0, 2**60, 12) > 1e-4


def test_rejected_draws_are_counted_as_consumed():
    reader = StreamReader(seed=5)
    s = 2**31 + 1  # about half of all 32-bit draws are rejected
    result = formats.integers(reader, 10_000, 0, s - 1)
    assert len(result.value) == 10_000
    assert result.consumed == reader.total
    assert 1.8 * 40_000 < result.consumed < 2.2 * 40_000


def test_constant_stream_cannot_loop_forever():
    with pytest.raises(RuntimeError, match="did not finish"):
        formats.integers(StreamReader(constant=0), 10, 0, 2**31)  # every word rejected


def test_floats_are_in_the_half_open_unit_interval():
    top = formats.uniform_floats(StreamReader(constant=0xFF), 10).value
    assert (top < 1.0).all() and top[0] == 1.0 - 2.0**-53
    assert (formats.uniform_floats(StreamReader(constant=0), 10).value == 0.0).all()
    result = formats.uniform_floats(StreamReader(seed=6), 65_536)
    assert result.consumed == 8 * 65_536
    assert ((result.value >= 0) & (result.value < 1)).all()
    assert abs(result.value.mean() - 0.5) < 5 * (1 / 12) ** 0.5 / 65_536**0.5
    assert chi_square(result.value, 0, 0.1, 10) > 1e-4


def test_normal_deviates():
    result = formats.normal_deviates(StreamReader(seed=7), 65_535)
    z = result.value
    assert len(z) == 65_535 and result.consumed == 16 * 32_768  # the odd deviate's bytes count too
    assert abs(z.mean()) < 5 / 65_535**0.5 and abs(z.std() - 1) < 0.015
    assert abs(np.mean(np.abs(z) < 1.959964) - 0.95) < 0.006
    for constant in (0, 0xFF):  # the extreme inputs stay finite
        assert np.isfinite(formats.normal_deviates(StreamReader(constant=constant), 4).value).all()
    shifted = formats.normal_deviates(StreamReader(seed=8), 10_000, mean=10, stddev=2).value
    assert abs(shifted.mean() - 10) < 0.1


def test_seed_feeds_numpy_seed_sequence():
    reader = StreamReader(seed=9)
    result = formats.seed(reader, 256)
    assert 0 <= result.value < 2**256 and result.consumed == 32 == reader.total
    assert len(np.random.SeedSequence(result.value).generate_state(4)) == 4
    assert formats.seed(reader, 128).value < 2**128
    with pytest.raises(FormatError):
        formats.seed(reader, 64)


def test_anu_shapes():
    reader = StreamReader(seed=10)
    body = formats.anu(reader, 10, "uint8")
    assert body.value["type"] == "uint8" and body.value["success"] is True and len(body.value["data"]) == 10
    assert all(0 <= v <= 255 for v in body.value["data"]) and body.consumed == 10
    body = formats.anu(reader, 5, "uint16")
    assert body.consumed == 10 and all(0 <= v <= 65535 for v in body.value["data"])
    body = formats.anu(reader, 5, "hex16", size=2)
    assert body.consumed == 10 and all(len(v) == 4 for v in body.value["data"])
    assert [int(v, 16) for v in body.value["data"]]  # valid hex
    assert formats.anu(reader, 3, "hex8", size=10).consumed == 30
    with pytest.raises(FormatError):
        formats.anu(reader, 1025, "uint8")
    with pytest.raises(FormatError):
        formats.anu(reader, 1, "int32")


@pytest.mark.parametrize("encoding", ["raw", "hex", "base64"])
def test_streamed_encodings_match_the_whole(encoding):
    data = StreamReader(seed=11)(10_007)
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]  # 1000 is not a multiple of 3
    streamed = b"".join(formats.encode_stream(iter(chunks), encoding))
    whole = {"raw": data, "hex": data.hex().encode(), "base64": base64.b64encode(data)}[encoding]
    assert streamed == whole


def test_render_dispatches_and_validates():
    reader = StreamReader(seed=12)
    assert formats.render("int", reader, {"min": 1, "max": 6, "count": 3}).value.shape == (3,)
    assert formats.render("uint64", reader, {"count": 2}).consumed == 16
    assert isinstance(formats.render("seed", reader, {"bits": 128}).value, int)
    with pytest.raises(FormatError, match="needs min and max"):
        formats.render("int", reader, {"count": 3})
    with pytest.raises(FormatError):
        formats.render("int", reader, {"min": 5, "max": 1})
    with pytest.raises(FormatError):
        formats.render("bogus", reader, {})
    assert "anu" in formats.describe_formats()


def reference_lemire(stream: bytes, count: int, low: int, high: int):
    """Lemire's algorithm one word at a time with Python integers: (values, bytes consumed)."""
    s = high - low + 1
    bits = 32 if s <= 2**32 else 64
    width = bits // 8
    threshold = (2**bits - s) % s
    values, offset = [], 0
    while len(values) < count:
        x = int.from_bytes(stream[offset : offset + width], "little")
        offset += width
        m = x * s
        if m % 2**bits >= threshold:
            values.append(low + (m >> bits))
    return values, offset


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 2**31), (-5, 2**32 - 6), (10 - 2**63, 10 - 2**62), (-(2**63), 2**62), (0, 2**33 + 1), (7, 7)],
)
def test_integers_match_a_word_by_word_reference(low, high):
    stream = np.random.default_rng(13).bytes(1 << 16)
    position = 0

    def read(n):
        nonlocal position
        position += n
        return stream[position - n : position]

    result = formats.integers(read, 1000, low, high)
    expected, consumed = reference_lemire(stream, 1000, low, high)
    assert [int(v) for v in result.value] == expected
    assert result.consumed == consumed == position
