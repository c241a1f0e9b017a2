"""Go compress/lzw (LSB, width 8) encoder and decoder."""

from __future__ import annotations

import random
import shutil
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.wire import lzw
from serfd.wire.codec import DecodeError


class Impl(NamedTuple):
    compress: Callable[[bytes], bytes]
    decompress: Callable[..., bytes]


# Every test runs against both implementations; the C one exists wherever setup.py could
# build it (test_c_module_is_built_where_it_can_be says when that must be so).
IMPLS = {"python": Impl(lzw.compress_py, lzw.decompress_py)}
if lzw.IMPLEMENTATION == "c":
    IMPLS["c"] = Impl(lzw.compress_c, lzw.decompress_c)
each_impl = pytest.mark.parametrize("impl", list(IMPLS.values()), ids=list(IMPLS))


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


@each_impl
@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"len{len(d)}")
def test_matches_reference_encoder(impl: Impl, data: bytes) -> None:
    assert impl.compress(data) == _pack(_reference_codes(data, leading_clear=True))


@each_impl
@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"len{len(d)}")
def test_round_trip(impl: Impl, data: bytes) -> None:
    assert impl.decompress(impl.compress(data)) == data


@each_impl
@pytest.mark.parametrize("data", SAMPLES[1:], ids=lambda d: f"len{len(d)}")
def test_accepts_stream_without_leading_clear(impl: Impl, data: bytes) -> None:
    assert impl.decompress(_pack(_reference_codes(data, leading_clear=False))) == data


@each_impl
def test_empty_input_is_clear_then_eof(impl: Impl) -> None:
    assert impl.compress(b"") == bytes.fromhex("000302")
    assert impl.decompress(b"\x01\x01") == b""  # a bare EOF (9 bits: 257) is fine too


@each_impl
def test_known_small_vector(impl: Impl) -> None:
    # clear(256), 'a'(97), EOF(257) at 9 bits each, LSB first.
    assert impl.compress(b"a") == bytes.fromhex("00c30404")


@each_impl
def test_hits_width_12_and_clears(impl: Impl) -> None:
    data = random.Random(3).randbytes(20000)
    codes = _reference_codes(data, leading_clear=True)
    assert max(w for _, w in codes) == 12
    assert sum(1 for c, _ in codes if c == 256) > 2
    assert impl.decompress(impl.compress(data)) == data


@each_impl
def test_clear_written_by_close(impl: Impl) -> None:
    # Cut the input where a mid-stream clear happened: now Close() writes it before EOF.
    data = random.Random(11).randbytes(6000)
    ends: list[int] = []
    _reference_codes(data, leading_clear=True, clear_ends=ends)
    prefix = data[: ends[0]]
    codes = _reference_codes(prefix, leading_clear=True)
    assert codes[-2] == (256, 12) and codes[-1] == (257, 9)
    assert impl.compress(prefix) == _pack(codes)
    assert impl.decompress(impl.compress(prefix)) == prefix


@each_impl
def test_requires_eof(impl: Impl) -> None:
    c = impl.compress(b"hello hello hello hello")
    with pytest.raises(DecodeError):
        impl.decompress(c[:-1])
    with pytest.raises(DecodeError):
        impl.decompress(b"")


@each_impl
def test_trailing_bytes_after_eof_ignored(impl: Impl) -> None:
    assert impl.decompress(impl.compress(b"xyz") + b"\xff\xff") == b"xyz"


@each_impl
def test_invalid_code(impl: Impl) -> None:
    with pytest.raises(DecodeError):
        impl.decompress(b"\xff\xff\xff")  # first code 511 > any defined code


@each_impl
def test_size_cap(impl: Impl) -> None:
    bomb = impl.compress(b"\x00" * 300_000)
    assert len(bomb) < 2000
    with pytest.raises(DecodeError):
        impl.decompress(bomb, max_size=100_000)
    assert len(impl.decompress(bomb, max_size=300_000)) == 300_000


@each_impl
def test_speed_50k(impl: Impl) -> None:
    rng = random.Random(5)
    words = [bytes(rng.randrange(97, 123) for _ in range(rng.randrange(3, 9))) for _ in range(300)]
    data = b" ".join(rng.choice(words) for _ in range(8000))[:50_000]
    t0 = time.perf_counter()
    c = impl.compress(data)
    t1 = time.perf_counter()
    assert impl.decompress(c) == data
    t2 = time.perf_counter()
    assert t1 - t0 < 0.1
    assert t2 - t1 < 0.1


@each_impl
@given(st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_round_trip_property(impl: Impl, data: bytes) -> None:
    assert impl.decompress(impl.compress(data)) == data


@each_impl
@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_matches_reference_property(impl: Impl, data: bytes) -> None:
    assert impl.compress(data) == _pack(_reference_codes(data, leading_clear=True))


@each_impl
@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_garbage_only_decode_error(impl: Impl, data: bytes) -> None:
    try:
        out = impl.decompress(data, max_size=10_000)
    except DecodeError:
        return
    assert len(out) <= 10_000


def test_c_module_is_built_where_it_can_be() -> None:
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("cc") is None or not include.exists():
        pytest.skip("no C compiler or no Python.h: setup.py builds serfd.wire._lzw only "
                    "where both exist (CI has them)")
    assert lzw.IMPLEMENTATION == "c", "serfd.wire._lzw was not built or not loaded"
    assert lzw.compress is lzw.compress_c and lzw.decompress is lzw.decompress_c


@given(st.binary(max_size=4000))
@settings(max_examples=400, deadline=None)
def test_c_and_python_agree_on_any_input(data: bytes) -> None:
    if "c" not in IMPLS:
        pytest.skip("serfd.wire._lzw is not built here")
    c, py = IMPLS["c"], IMPLS["python"]
    packed = py.compress(data)
    assert c.compress(data) == packed
    assert c.decompress(packed) == data
    # Any bytes as a stream: the same output, or the same error text.
    results = []
    for impl in (c, py):
        try:
            results.append(("ok", impl.decompress(data, max_size=5_000)))
        except DecodeError as e:
            results.append(("error", str(e)))
    assert results[0] == results[1]
