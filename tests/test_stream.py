"""TCP stream framing: push/pull, ping/ack/err/user, compression, encryption, hostile input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.testing.fakes import KEY_A, KEY_B, GcmKeyring
from serfd.wire.codec import DecodeError, pack_gossip
from serfd.wire.framing import (
    MAX_STREAM_SIZE,
    StreamReader,
    decode_push_pull,
    decode_user_stream,
    encode_push_pull,
    encode_stream,
    encode_user_stream,
)
from serfd.wire.messages import Ack, ErrResp, Ping, PushNodeState, PushPullHeader
from serfd.wire.packet import compress_message
from serfd.wire.serf_messages import MessagePushPull, decode_serf_message, encode_tags

LOCAL = bytes([127, 0, 0, 1])


def _node(i: int) -> PushNodeState:
    return PushNodeState(
        name=f"node-{i}",
        addr=LOCAL,
        port=7946 + i,
        meta=encode_tags({"role": "web", "i": str(i)}),
        incarnation=i,
        state=i % 4,
    )


USER_STATE = MessagePushPull(
    ltime=5, status_ltimes={"node-0": 3}, left_members=("gone",), events=(None,) * 512
).encode()
PUSH_PULL = encode_push_pull(True, [_node(i) for i in range(5)], USER_STATE)
PING = Ping(seq_no=9, node="vec1", source_addr=LOCAL, source_port=1, source_node="me").encode()
ACK = Ack(seq_no=9, payload=None).encode()
ERR = ErrResp(error="remote says no").encode()
USER = encode_user_stream(b"\x03serf-bytes")


def _read_all(data: bytes, chunk: int = 1 << 16, **kw: object) -> bytes:
    r = StreamReader(**kw)  # type: ignore[arg-type]
    out = None
    for i in range(0, len(data), chunk):
        assert out is None, "message completed before its last byte"
        r.feed(data[i : i + chunk])
        out = r.message()
    assert out is not None
    assert r.buffered == 0
    return out


def test_push_pull_layout_and_round_trip() -> None:
    assert PUSH_PULL[0] == 6
    head = msgpack.Unpacker(raw=True)
    head.feed(PUSH_PULL[1:])
    assert head.unpack() == {b"Join": True, b"Nodes": 5, b"UserStateLen": len(USER_STATE)}
    header, nodes, user = decode_push_pull(PUSH_PULL)
    assert header == PushPullHeader(nodes=5, user_state_len=len(USER_STATE), join=True)
    assert nodes == [_node(i) for i in range(5)]
    assert user == USER_STATE
    assert decode_serf_message(user) == MessagePushPull(
        ltime=5, status_ltimes={"node-0": 3}, left_members=("gone",), events=(None,) * 512
    )


def test_empty_push_pull() -> None:
    pp = encode_push_pull(False, [], b"")
    assert decode_push_pull(pp) == (PushPullHeader(0, 0, False), [], b"")
    assert _read_all(pp) == pp


@pytest.mark.parametrize(
    "msg", [PUSH_PULL, PING, ACK, ERR, USER], ids=["pp", "ping", "ack", "err", "user"]
)
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("encrypt", [False, True])
def test_reader_byte_by_byte(msg: bytes, compress: bool, encrypt: bool) -> None:
    ring = GcmKeyring(KEY_A) if encrypt else None
    wire = encode_stream(msg, compress=compress, keyring=ring)
    if encrypt:
        assert wire[0] == 10 and int.from_bytes(wire[1:5], "big") == len(wire) - 5
    elif compress:
        assert wire[0] == 9
    else:
        assert wire == msg
    assert _read_all(wire, chunk=1, keyring=ring) == msg
    assert _read_all(wire, chunk=7, keyring=ring) == msg


def test_encryption_aad_is_header() -> None:
    ring = GcmKeyring(KEY_A)
    wire = encode_stream(PING, compress=False, keyring=ring)
    blob = wire[5:]
    # The same blob announced with another length: the AAD differs, so it must not decrypt.
    r = StreamReader(keyring=ring)
    r.feed(b"\x0a" + (len(blob) + 1).to_bytes(4, "big") + blob + b"\x00")
    with pytest.raises(DecodeError):
        r.message()


def test_decrypt_with_secondary_key() -> None:
    wire = encode_stream(PUSH_PULL, compress=True, keyring=GcmKeyring(KEY_B))
    assert _read_all(wire, keyring=GcmKeyring(KEY_A, KEY_B)) == PUSH_PULL


def test_encryption_policy_errors() -> None:
    r = StreamReader()
    r.feed(encode_stream(PING, compress=False, keyring=GcmKeyring(KEY_A)))
    with pytest.raises(DecodeError, match="encryption is not configured"):
        r.message()
    r = StreamReader(keyring=GcmKeyring(KEY_A))
    r.feed(PING)
    with pytest.raises(DecodeError, match="not encrypted"):
        r.message()
    r = StreamReader(keyring=GcmKeyring(KEY_A), verify_incoming=False)
    r.feed(PING)
    assert r.message() == PING


def test_oversize_refused_early() -> None:
    r2 = StreamReader(keyring=GcmKeyring(KEY_A))
    r2.feed(b"\x0a" + (MAX_STREAM_SIZE + 1).to_bytes(4, "big"))
    with pytest.raises(DecodeError, match="larger than limit"):
        r2.message()
    small = StreamReader(max_size=1000)
    with pytest.raises(DecodeError):
        small.feed(b"\x06" + b"\x00" * 2000)


@pytest.mark.parametrize(
    "header",
    [
        {"Join": False, "Nodes": 2**40, "UserStateLen": 0},
        {"Join": False, "Nodes": -1, "UserStateLen": 0},
        {"Join": False, "Nodes": 0, "UserStateLen": 2**31},
        {"Join": False, "Nodes": 0, "UserStateLen": -5},
        {"Join": False, "Nodes": "many", "UserStateLen": 0},
    ],
)
def test_absurd_headers_rejected_without_waiting(header: dict[str, object]) -> None:
    raw = b"\x06" + pack_gossip({k.encode(): v for k, v in header.items()})
    r = StreamReader()
    r.feed(raw)
    with pytest.raises(DecodeError):
        r.message()
    with pytest.raises(DecodeError):
        decode_push_pull(raw)


def test_user_state_over_max_size() -> None:
    raw = encode_push_pull(False, [], b"x" * 100)
    r = StreamReader(max_size=50)
    r.feed(raw[:40])
    assert len(raw) - 100 < 40
    with pytest.raises(DecodeError):
        r.message()


def test_incomplete_is_none_then_complete() -> None:
    r = StreamReader()
    r.feed(PUSH_PULL[:-1])
    assert r.message() is None
    assert r.message() is None
    r.feed(PUSH_PULL[-1:])
    assert r.message() == PUSH_PULL
    assert r.message() is None


def test_back_to_back_messages() -> None:
    r = StreamReader()
    r.feed(PING + ACK)
    assert r.message() == PING
    assert r.message() == ACK
    assert r.message() is None


def test_bad_types_and_nesting() -> None:
    for bad in (b"\x01\x80", b"\x07\x00", b"\x0c\x00", b"\xff"):
        r = StreamReader()
        r.feed(bad)
        with pytest.raises(DecodeError):
            r.message()
    # compression inside compression is not something memberlist reads.
    r = StreamReader()
    r.feed(compress_message(compress_message(PING)))
    with pytest.raises(DecodeError):
        r.message()
    # a compressed but truncated push/pull
    r = StreamReader()
    r.feed(compress_message(PUSH_PULL[:-3]))
    with pytest.raises(DecodeError):
        r.message()


def test_compressed_bomb_capped() -> None:
    r = StreamReader(max_size=100_000)
    r.feed(compress_message(encode_user_stream(b"\x00" * 500_000)))
    with pytest.raises(DecodeError):
        r.message()


def test_decode_push_pull_errors() -> None:
    with pytest.raises(DecodeError):
        decode_push_pull(PUSH_PULL[:-1])
    with pytest.raises(DecodeError):
        decode_push_pull(PING)
    with pytest.raises(DecodeError):
        decode_push_pull(b"")
    bad_node = b"\x06" + pack_gossip({b"Join": False, b"Nodes": 1, b"UserStateLen": 0}) + b"\x05"
    with pytest.raises(DecodeError):
        decode_push_pull(bad_node)


def test_empty_stream_message_refused() -> None:
    with pytest.raises(ValueError):
        encode_stream(b"", compress=True)


def test_user_stream() -> None:
    assert decode_user_stream(USER) == b"\x03serf-bytes"
    with pytest.raises(DecodeError):
        decode_user_stream(USER[:-1])
    with pytest.raises(DecodeError):
        decode_user_stream(PING)


def test_big_push_pull_compresses_well() -> None:
    big = encode_push_pull(False, [_node(i) for i in range(400)], USER_STATE)
    wire = encode_stream(big, compress=True)
    assert len(wire) < len(big) // 2
    assert _read_all(wire, chunk=1500) == big


# --------------------------------------------------------------------------- properties

VALID = [
    encode_stream(PUSH_PULL, compress=False),
    encode_stream(PUSH_PULL, compress=True),
    encode_stream(PING, compress=True),
    encode_stream(USER, compress=False),
    encode_stream(ERR, compress=True, keyring=GcmKeyring(KEY_A)),
    encode_stream(PUSH_PULL, compress=True, keyring=GcmKeyring(KEY_A)),
]


def _drain(data: bytes, chunk: int, **kw: object) -> None:
    r = StreamReader(max_size=200_000, **kw)  # type: ignore[arg-type]
    try:
        for i in range(0, len(data), chunk):
            r.feed(data[i : i + chunk])
            while (m := r.message()) is not None:
                assert m[0] in (0, 2, 6, 8, 13)
                if m[0] == 6:
                    decode_push_pull(m)
                elif m[0] == 8:
                    decode_user_stream(m)
    except DecodeError:
        pass


@given(st.binary(max_size=400), st.integers(1, 64))
@settings(max_examples=400, deadline=None)
def test_random_bytes_only_decode_error(data: bytes, chunk: int) -> None:
    _drain(data, chunk)
    _drain(b"\x06" + data, chunk)
    _drain(b"\x09" + data, chunk)
    _drain(b"\x0a" + data, chunk, keyring=GcmKeyring(KEY_A))
    for t in (6, 8):
        with contextlib.suppress(DecodeError):
            decode_push_pull(bytes([t]) + data)
        with contextlib.suppress(DecodeError):
            decode_user_stream(bytes([t]) + data)


@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=5),
    st.integers(1, 300),
)
@settings(max_examples=400, deadline=None)
def test_mutated_streams_only_decode_error(
    which: int, flips: list[tuple[int, int]], chunk: int
) -> None:
    wire = bytearray(VALID[which])
    for pos, val in flips:
        wire[pos % len(wire)] = val
    _drain(bytes(wire), chunk)
    _drain(bytes(wire), chunk, keyring=GcmKeyring(KEY_A))
