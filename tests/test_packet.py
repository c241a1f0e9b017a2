"""The UDP pipeline: compound, compress, CRC, encryption seam, and hostile input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.testing.fakes import KEY_A, KEY_B, GcmKeyring
from serfd.wire import lzw
from serfd.wire.codec import DecodeError
from serfd.wire.messages import Ack, Alive, Compress, Dead, Nack, Ping, PushPullHeader, Suspect
from serfd.wire.packet import (
    MAX_NESTING,
    compound_size,
    compress_message,
    decode_packet,
    decompress_message,
    encode_packet,
    make_compound,
)
from serfd.wire.serf_messages import encode_tags

LOCAL = bytes([127, 0, 0, 1])
PING = Ping(seq_no=7, node="py1", source_addr=LOCAL, source_port=7946, source_node="goA").encode()
ALIVE_GOA = Alive(
    incarnation=1, node="goA", addr=LOCAL, port=17946, meta=encode_tags({"dc": "x1", "role": "web"})
).encode()
ALIVE_PY1 = Alive(incarnation=1, node="py1", addr=LOCAL, port=7946, meta=b"\xff\x80").encode()
SUSPECT = Suspect(incarnation=3, node="x", from_="goA").encode()
USER = b"\x08\x03" + b"serf user event body"


def test_compound_layout() -> None:
    c = make_compound([b"\x02ab", b"\x05"])
    assert c == b"\x07\x02\x00\x03\x00\x01\x02ab\x05"
    assert compound_size([3, 1]) == len(c)
    assert make_compound([]) == b"\x07\x00"


def test_compound_limits() -> None:
    with pytest.raises(ValueError):
        make_compound([b"\x01"] * 256)
    with pytest.raises(ValueError):
        make_compound([b""])
    with pytest.raises(ValueError):
        make_compound([b"\x08" * 70000])
    assert len(make_compound([b"\x01"] * 255)) == 2 + 255 * 3


def test_never_sends_empty_messages() -> None:
    # serf 0.9.4 panics on an empty compound part (07 01 00 00): never produce one.
    for parts in ([], [b""], [PING, b""]):
        with pytest.raises(ValueError):
            encode_packet(parts, compress=True, crc=False)
    assert decode_packet(b"\x07\x02\x00\x00\x00\x01\x02") == [b"\x02"]  # we drop it


def test_gossip_datagram_shape_matches_go() -> None:
    # PROTOCOL.md section 6: 0c <crc32> 07 02 004c 0045 <alive goA> <alive py1>
    # (py1's alive there carried a 10-byte meta, 69 bytes in all.)
    py1 = Alive(incarnation=1, node="py1", addr=LOCAL, port=7946, meta=encode_tags({"role": "py"}))
    pkt = encode_packet([ALIVE_GOA, py1.encode()], compress=False, crc=True)
    assert pkt[0] == 0x0C
    assert pkt[5:11] == bytes.fromhex("0702004c0045")
    assert struct.unpack(">I", pkt[1:5])[0] == zlib.crc32(pkt[5:])
    assert decode_packet(pkt) == [ALIVE_GOA, py1.encode()]


def test_single_message_goes_bare() -> None:
    assert encode_packet([PING], compress=False, crc=False) == PING
    assert decode_packet(PING) == [PING]


def test_compress_only_if_shorter() -> None:
    tiny = Nack(seq_no=1).encode()
    assert encode_packet([tiny], compress=True, crc=False) == tiny
    parts = [ALIVE_GOA, ALIVE_PY1, ALIVE_GOA, PING]
    pkt = encode_packet(parts, compress=True, crc=False)
    assert pkt[0] == 9
    assert len(pkt) < len(make_compound(parts))
    assert decode_packet(pkt) == parts
    inner = decompress_message(pkt[1:])
    assert inner == make_compound(parts)


def test_compress_message_layout() -> None:
    c = compress_message(PING)
    # 09 82 a4"Algo" 00 a3"Buf" <raw lzw>
    assert c.startswith(b"\x09\x82\xa4Algo\x00\xa3Buf")
    assert Compress.from_body(c[1:]).buf == lzw.compress(PING)


def test_crc_mismatch_and_short_crc() -> None:
    pkt = bytearray(encode_packet([PING, SUSPECT], compress=False, crc=True))
    pkt[-1] ^= 1
    with pytest.raises(DecodeError):
        decode_packet(bytes(pkt))
    with pytest.raises(DecodeError):
        decode_packet(b"\x0c\x00\x00")  # too short for a CRC: type 12 itself is unsupported


def test_crc_around_compression() -> None:
    parts = [ALIVE_GOA, ALIVE_GOA, ALIVE_GOA]
    pkt = encode_packet(parts, compress=True, crc=True)
    assert pkt[0] == 12 and pkt[5] == 9
    assert decode_packet(pkt) == parts


def test_encryption_round_trip_and_key_rotation() -> None:
    ring = GcmKeyring(KEY_A)
    pkt = encode_packet([PING, ALIVE_GOA], compress=True, crc=True, keyring=ring)
    assert pkt[0] == 1 and len(pkt) > 29
    assert decode_packet(pkt, keyring=GcmKeyring(KEY_B, KEY_A)) == [PING, ALIVE_GOA]
    with pytest.raises(DecodeError):
        decode_packet(pkt, keyring=GcmKeyring(KEY_B))
    with pytest.raises(DecodeError):
        decode_packet(PING, keyring=ring)
    # GossipVerifyIncoming off: an undecryptable datagram is read as plaintext.
    assert decode_packet(PING, keyring=ring, verify_incoming=False) == [PING]


def test_truncated_compound_keeps_whole_parts() -> None:
    c = make_compound([PING, SUSPECT, USER])
    assert decode_packet(c[:-1]) == [PING, SUSPECT]
    assert decode_packet(c[: len(c) - len(USER) - 1]) == [PING]
    assert decode_packet(c[:8]) == []
    with pytest.raises(DecodeError):
        decode_packet(c[:5])  # the length table itself is cut
    with pytest.raises(DecodeError):
        decode_packet(b"\x07")


def test_nested_parts_and_bad_parts() -> None:
    inner = compress_message(make_compound([SUSPECT, USER]))
    bad_compress = b"\x09\x82\xa4Algo\x01\xa3Buf\xa0"  # unknown algorithm
    c = make_compound([PING, inner, bad_compress, b"\x06\x80", b"\x0d", ALIVE_PY1])
    # Go handles each part on its own: bad ones are dropped, the rest survive in order.
    assert decode_packet(c) == [PING, SUSPECT, USER, ALIVE_PY1]


def test_unsupported_types_at_top_level() -> None:
    for t in (6, 10, 13, 14, 200):
        with pytest.raises(DecodeError):
            decode_packet(bytes([t]) + b"\x80")
    with pytest.raises(DecodeError):
        decode_packet(b"")


def test_nesting_bounded() -> None:
    msg = PING
    for _ in range(MAX_NESTING):
        msg = make_compound([msg])
    assert decode_packet(msg) == [PING]
    deep = make_compound([msg])
    assert decode_packet(deep) == []  # the innermost part is too deep and dropped
    deep_compress = PING
    for _ in range(MAX_NESTING + 2):
        deep_compress = compress_message(deep_compress)
    with pytest.raises(DecodeError):
        decode_packet(deep_compress)


def test_decompression_budget() -> None:
    bomb = compress_message(b"\x08" + b"\x00" * 2_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(DecodeError):
        decode_packet(bomb)
    assert decode_packet(bomb, max_size=3_000_000) == [b"\x08" + b"\x00" * 2_000_000]
    # The budget is per datagram, not per part.
    part = compress_message(b"\x08" + b"\x00" * 600_000)
    assert decode_packet(make_compound([part, part])) == [b"\x08" + b"\x00" * 600_000]


def test_decoded_messages_decode() -> None:
    for msg in (Ack(seq_no=1, payload=b"x").encode(), Dead(1, "a", "a").encode(), USER):
        assert decode_packet(encode_packet([msg, PING], compress=True, crc=True)) == [msg, PING]


def test_push_pull_is_not_a_packet() -> None:
    hdr = PushPullHeader(nodes=0, user_state_len=0, join=False).encode()
    with pytest.raises(DecodeError):
        decode_packet(hdr)


def _valid_packets() -> list[bytes]:
    ring = GcmKeyring(KEY_A)
    return [
        PING,
        encode_packet([PING, ALIVE_GOA, SUSPECT, USER], compress=True, crc=True),
        encode_packet([ALIVE_GOA, ALIVE_PY1], compress=False, crc=True),
        encode_packet([ALIVE_GOA, USER], compress=True, crc=False, keyring=ring),
        make_compound([compress_message(make_compound([PING, USER])), SUSPECT]),
    ]


def _check(data: bytes, **kw: object) -> None:
    try:
        out = decode_packet(data, **kw)  # type: ignore[arg-type]
    except DecodeError:
        return
    assert isinstance(out, list)
    assert all(isinstance(m, bytes) and m for m in out)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_decode_error(data: bytes) -> None:
    _check(data)
    _check(data, keyring=GcmKeyring(KEY_A))
    _check(b"\x07" + data)
    _check(b"\x09" + data)


@given(
    st.sampled_from(range(len(_valid_packets()))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 10_000),
)
@settings(max_examples=500, deadline=None)
def test_mutated_packets_only_decode_error(
    which: int, flips: list[tuple[int, int]], cut: int
) -> None:
    pkt = bytearray(_valid_packets()[which])
    for pos, val in flips:
        pkt[pos % len(pkt)] = val
    _check(bytes(pkt))
    _check(bytes(pkt[: cut % (len(pkt) + 1)]))
    _check(bytes(pkt), keyring=GcmKeyring(KEY_A))
