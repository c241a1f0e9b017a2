"""Go compress/lzw (LSB, width 8) encoder and decoder."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.wire.codec import DecodeError
from serfd.wire.lzw import compress, decompress


def _reference_codes(
    data: bytes, *, leading_clear: bool, clear_ends: list[int] | None = None
) -> list[tuple[int, int]]:
    """A slow, obvious LZW encoder: the (code, width) sequence Go's writer emits.

    ``clear_ends`` collects the input offsets at which a mid-stream clear was written.
    """
    codes: list[tuple[int, int]] = []
    width, nxt = 9, 258  # nxt = the next code to assign
    if leading_clear or not data:
        codes.append((256, width))
    if data:
        table = {bytes([i]): i for i in range(256)}
        cur = data[:1]
        for pos, b in enumerate(data[1:], start=1):
            cand = cur + bytes([b])
            if cand in table:
                cur = cand
                continue
            codes.append((table[cur], width))
            cur = bytes([b])
            if nxt == (1 << width):
                width += 1
            # Go's incHi: the counter becomes nxt; grow at 2**width; clear at 4095.
            hi = nxt
            if hi == 4095:
                codes.append((256, width))
                if clear_ends is not None:
                    clear_ends.append(pos)
                width, nxt = 9, 258
                table = {bytes([i]): i for i in range(256)}
                continue
            table[cand] = hi
            nxt += 1
        codes.append((table[cur], width))
        hi = nxt
        if hi == (1 << width):
            width += 1
        if hi == 4095:
            codes.append((256, width))
            width = 9
    codes.append((257, width))
    return codes


def _pack(codes: list[tuple[int, int]]) -> bytes:
    acc = nbits = 0
    out = bytearray()
    for code, width in codes:
        acc |= code << nbits
        nbits += width
    while nbits > 0:
        out.append(acc & 0xFF)
        acc >>= 8
        nbits -= 8
    return bytes(out)


SAMPLES = [
    b"",
    b"a",
    b"ab",
    b"aaaa",
    b"hello hello hello hello",
    bytes(range(256)) * 3,
    b"\x00" * 5000,
    random.Random(7).randbytes(9000),  # several mid-stream clears
    bytes(b & 3 for b in random.Random(8).randbytes(40000)),
]


@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"len{len(d)}")
def test_matches_reference_encoder(data: bytes) -> None:
    assert compress(data) == _pack(_reference_codes(data, leading_clear=True))


@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"len{len(d)}")
def test_round_trip(data: bytes) -> None:
    assert decompress(compress(data)) == data


@pytest.mark.parametrize("data", SAMPLES[1:], ids=lambda d: f"len{len(d)}")
def test_accepts_stream_without_leading_clear(data: bytes) -> None:
    assert decompress(_pack(_reference_codes(data, leading_clear=False))) == data


def test_empty_input_is_clear_then_eof() -> None:
    assert compress(b"") == bytes.fromhex("000302")
    assert decompress(b"\x01\x01") == b""  # a bare EOF (9 bits: 257) is fine too


def test_known_small_vector() -> None:
    # clear(256), 'a'(97), EOF(257) at 9 bits each, LSB first.
    assert compress(b"a") == bytes.fromhex("00c30404")


def test_hits_width_12_and_clears() -> None:
    data = random.Random(3).randbytes(20000)
    codes = _reference_codes(data, leading_clear=True)
    assert max(w for _, w in codes) == 12
    assert sum(1 for c, _ in codes if c == 256) > 2
    assert decompress(compress(data)) == data


def test_clear_written_by_close() -> None:
    # Cut the input where a mid-stream clear happened: now Close() writes it before EOF.
    data = random.Random(11).randbytes(6000)
    ends: list[int] = []
    _reference_codes(data, leading_clear=True, clear_ends=ends)
    prefix = data[: ends[0]]
    codes = _reference_codes(prefix, leading_clear=True)
    assert codes[-2] == (256, 12) and codes[-1] == (257, 9)
    assert compress(prefix) == _pack(codes)
    assert decompress(compress(prefix)) == prefix


def test_requires_eof() -> None:
    c = compress(b"hello hello hello hello")
    with pytest.raises(DecodeError):
        decompress(c[:-1])
    with pytest.raises(DecodeError):
        decompress(b"")


def test_trailing_bytes_after_eof_ignored() -> None:
    assert decompress(compress(b"xyz") + b"\xff\xff") == b"xyz"


def test_invalid_code() -> None:
    with pytest.raises(DecodeError):
        decompress(b"\xff\xff\xff")  # first code 511 > any defined code


def test_size_cap() -> None:
    bomb = compress(b"\x00" * 300_000)
    assert len(bomb) < 2000
    with pytest.raises(DecodeError):
        decompress(bomb, max_size=100_000)
    assert len(decompress(bomb, max_size=300_000)) == 300_000


def test_speed_50k() -> None:
    rng = random.Random(5)
    words = [bytes(rng.randrange(97, 123) for _ in range(rng.randrange(3, 9))) for _ in range(300)]
    data = b" ".join(rng.choice(words) for _ in range(8000))[:50_000]
    t0 = time.perf_counter()
    c = compress(data)
    t1 = time.perf_counter()
    assert decompress(c) == data
    t2 = time.perf_counter()
    assert t1 - t0 < 0.1
    assert t2 - t1 < 0.1


@given(st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_round_trip_property(data: bytes) -> None:
    assert decompress(compress(data)) == data


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_matches_reference_property(data: bytes) -> None:
    assert compress(data) == _pack(_reference_codes(data, leading_clear=True))


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_garbage_only_decode_error(data: bytes) -> None:
    try:
        out = decompress(data, max_size=10_000)
    except DecodeError:
        return
    assert len(out) <= 10_000
