"""go-msgpack gossip dialect, memberlist and Serf message schemas: vectors, round trips, fuzz."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.wire.codec import DecodeError, pack_gossip
from serfd.wire.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    Compress,
    Dead,
    ErrResp,
    IndirectPing,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    UserData,
    UserMsgHeader,
    bytes_to_ip,
    decode_message,
    ip_to_bytes,
)
from serfd.wire.serf_messages import (
    MessageJoin,
    MessageLeave,
    MessagePushPull,
    MessageQuery,
    MessageQueryResponse,
    MessageUserEvent,
    UserEventRecord,
    UserEvents,
    decode_serf_message,
    decode_tags,
    encode_tags,
)

LOCAL = bytes([127, 0, 0, 1])


def _s(text: str) -> bytes:
    """A fixstr (the raw family go-msgpack writes for both string and []byte)."""
    assert len(text) < 32
    return bytes([0xA0 | len(text)]) + text.encode()


# --------------------------------------------------------------------------- PROTOCOL.md section 6


def test_ping_vector() -> None:
    # 00 85 a4"Node" a3"py1" a5"SeqNo" 01 aa"SourceAddr" a4 7f000001 aa"SourceNode" a3"goA"
    # aa"SourcePort" cd 461a
    want = (
        b"\x00\x85"
        + _s("Node") + _s("py1")
        + _s("SeqNo") + b"\x01"
        + _s("SourceAddr") + b"\xa4" + LOCAL
        + _s("SourceNode") + _s("goA")
        + _s("SourcePort") + b"\xcd\x46\x1a"
    )  # fmt: skip
    ping = Ping(seq_no=1, node="py1", source_addr=LOCAL, source_port=17946, source_node="goA")
    assert ping.encode() == want
    assert decode_message(want) == ping


def test_alive_vector() -> None:
    # 04 86 a4"Addr" a4 7f000001 ab"Incarnation" 01 a4"Meta" b1 ff82a2"dc"a2"x1"a4"role"a3"web"
    # a4"Node" a3"goA" a4"Port" cd 461a a3"Vsn" a6 010502020505
    meta = b"\xff\x82" + _s("dc") + _s("x1") + _s("role") + _s("web")
    want = (
        b"\x04\x86"
        + _s("Addr") + b"\xa4" + LOCAL
        + _s("Incarnation") + b"\x01"
        + _s("Meta") + b"\xb1" + meta
        + _s("Node") + _s("goA")
        + _s("Port") + b"\xcd\x46\x1a"
        + _s("Vsn") + b"\xa6\x01\x05\x02\x02\x05\x05"
    )  # fmt: skip
    alive = Alive(incarnation=1, node="goA", addr=LOCAL, port=17946, meta=meta)
    assert encode_tags({"dc": "x1", "role": "web"}) == meta
    assert alive.vsn == DEFAULT_VSN
    assert alive.encode() == want
    assert decode_message(want) == alive
    assert decode_tags(meta) == {"dc": "x1", "role": "web"}


def test_user_event_vector() -> None:
    # 08 03 84 a2"CC" c3 a5"LTime" 01 a4"Name" a6"deploy" a7"Payload" ad"hello-payload"
    ev = MessageUserEvent(ltime=1, name="deploy", payload=b"hello-payload", cc=True)
    want = (
        b"\x03\x84"
        + _s("CC") + b"\xc3"
        + _s("LTime") + b"\x01"
        + _s("Name") + _s("deploy")
        + _s("Payload") + _s("hello-payload")
    )  # fmt: skip
    assert ev.encode() == want
    assert decode_serf_message(want) == ev


def test_dialect_details() -> None:
    # 40-byte name: str16 (da 00 28), never str8; nil Meta is c0; omitempty drops zero fields.
    name = "n" * 40
    body = Alive(incarnation=0, node=name, addr=LOCAL, port=1, meta=None).body()
    assert b"\xda\x00\x28" + name.encode() in body
    assert _s("Meta") + b"\xc0" in body
    assert b"\xd9" not in body
    assert Ping(seq_no=1, node="").body() == b"\x82" + _s("Node") + b"\xa0" + _s("SeqNo") + b"\x01"
    assert encode_tags({}) == b"\xff\x80"


def test_decoder_leniency_like_go() -> None:
    # Unknown keys ignored, missing keys zero, bin accepted for []byte, nil for anything.
    body = pack_gossip({b"SeqNo": 5, b"Extra": [1, 2]})
    assert Ack.from_body(body) == Ack(seq_no=5, payload=None)
    binbody = msgpack.packb({"SeqNo": 1, "Payload": b"\x01\x02"}, use_bin_type=True)
    assert Ack.from_body(binbody).payload == b"\x01\x02"
    assert Nack.from_body(pack_gossip({b"SeqNo": None})) == Nack(seq_no=0)


@pytest.mark.parametrize(
    "body",
    [
        {b"SeqNo": -1},
        {b"SeqNo": 2**32},
        {b"SeqNo": "x"},
        {b"SeqNo": True},
        {b"SeqNo": 1.5},
    ],
)
def test_decoder_type_checks(body: dict[bytes, Any]) -> None:
    with pytest.raises(DecodeError):
        Nack.from_body(pack_gossip(body))


def test_ip_helpers() -> None:
    assert ip_to_bytes("127.0.0.1") == LOCAL
    assert ip_to_bytes("::ffff:10.0.0.1") == bytes([10, 0, 0, 1])
    assert bytes_to_ip(bytes(10) + b"\xff\xff" + LOCAL) == "127.0.0.1"
    assert bytes_to_ip(ip_to_bytes("fe80::1")) == "fe80::1"
    with pytest.raises(DecodeError):
        bytes_to_ip(b"\x01\x02")


def test_tags_legacy_role_meta() -> None:
    assert decode_tags(b"web") == {"role": "web"}
    assert decode_tags(b"") == {"role": ""}
    assert decode_tags(None) == {"role": ""}
    with pytest.raises(DecodeError):
        decode_tags(b"\xff\x01")
    with pytest.raises(DecodeError):
        decode_tags(b"\xff\x81\xa1a\x01")


# --------------------------------------------------------------------------- round trips

MEMBERLIST_MESSAGES: list[Message] = [
    Ping(seq_no=1, node="a"),
    Ping(seq_no=2**32 - 1, node="", source_addr=LOCAL, source_port=65535, source_node="me"),
    IndirectPing(seq_no=3, target=LOCAL, port=7946, node="t", nack=True, source_addr=LOCAL,
                 source_port=1, source_node="s"),
    IndirectPing(seq_no=3, target=bytes(16), port=7946, node="t"),
    Ack(seq_no=4, payload=b"\x01coord"),
    Ack(seq_no=4),
    Nack(seq_no=5),
    Suspect(incarnation=6, node="n", from_="f"),
    Dead(incarnation=7, node="n", from_="n"),
    Alive(incarnation=8, node="n", addr=LOCAL, port=7946, meta=encode_tags({"a": "b"})),
    Alive(incarnation=0, node="n", addr=None, port=0, meta=None, vsn=None),
    ErrResp(error="boom"),
]  # fmt: skip


@pytest.mark.parametrize("msg", MEMBERLIST_MESSAGES, ids=lambda m: type(m).__name__)
def test_memberlist_round_trip(msg: Message) -> None:
    data = msg.encode()
    assert data[0] == msg.TYPE
    assert decode_message(data) == msg


@pytest.mark.parametrize(
    "msg",
    [
        PushPullHeader(nodes=3, user_state_len=100, join=True),
        PushNodeState(name="x", addr=LOCAL, port=1, meta=b"\xff\x80", incarnation=2, state=3),
        UserMsgHeader(user_msg_len=12),
        Compress(algo=0, buf=b"\x00\x03\x02"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_stream_struct_round_trip(msg: Message) -> None:
    assert type(msg).from_body(msg.body()) == msg


def test_user_data() -> None:
    assert UserData(b"\x03abc").encode() == b"\x08\x03abc"
    assert decode_message(b"\x08\x03abc") == UserData(b"\x03abc")


def test_decode_message_rejects_stream_and_wrapper_types() -> None:
    for t in (6, 7, 9, 10, 12, 14, 255):
        with pytest.raises(DecodeError):
            decode_message(bytes([t]) + b"\x80")
    with pytest.raises(DecodeError):
        decode_message(b"")


SERF_MESSAGES = [
    MessageLeave(ltime=1, node="a", prune=True),
    MessageLeave(ltime=2**64 - 1, node="b"),
    MessageJoin(ltime=3, node="c"),
    MessageUserEvent(ltime=4, name="deploy", payload=b"", cc=False),
    MessageUserEvent(ltime=4, name="deploy", payload=None, cc=True),
    MessageQuery(ltime=5, id=2**31 - 1, addr=LOCAL, port=7946, source_node="s",
                 filters=[b"\x00\x91\xa1a", b"\x01\x82\xa3Tag\xa1r\xa4Expr\xa1w"], flags=3,
                 relay_factor=2, timeout=15_000_000_000, name="uptime", payload=b"q"),
    MessageQuery(ltime=5, id=1, addr=bytes(16), port=1, source_node="s", filters=None, flags=0,
                 relay_factor=0, timeout=0, name="", payload=None),
    MessageQueryResponse(ltime=6, id=7, from_="r", flags=1, payload=b"resp"),
    MessagePushPull(ltime=1, status_ltimes={"a": 1, "b": 2}, left_members=("b",), event_ltime=9,
                    events=(None, UserEvents(8, (UserEventRecord("e", b"p"),
                                                 UserEventRecord("f", None))), None),
                    query_ltime=3),
    MessagePushPull(ltime=0),
]  # fmt: skip


@pytest.mark.parametrize("msg", SERF_MESSAGES, ids=lambda m: type(m).__name__)
def test_serf_round_trip(msg: Any) -> None:
    data = msg.encode()
    assert data[0] == msg.TYPE
    assert decode_serf_message(data) == msg


def test_serf_push_pull_key_order() -> None:
    body = MessagePushPull(ltime=1).encode()[1:]
    keys = [b"EventLTime", b"Events", b"LTime", b"LeftMembers", b"QueryLTime", b"StatusLTimes"]
    positions = [body.index(_s(k.decode())) for k in keys]
    assert positions == sorted(positions)


def test_serf_rejects_unknown_and_internal_types() -> None:
    for t in (6, 7, 8, 9, 10, 200):
        with pytest.raises(DecodeError):
            decode_serf_message(bytes([t]) + b"\x80")
    with pytest.raises(DecodeError):
        decode_serf_message(b"")


# --------------------------------------------------------------------------- properties

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_u32 = st.integers(0, 2**32 - 1)
_u16 = st.integers(0, 2**16 - 1)
_blob = st.none() | st.binary(min_size=1, max_size=40)


@given(
    st.one_of(
        st.builds(Ping, _u32, _text, st.none() | st.binary(min_size=4, max_size=4), _u16, _text),
        st.builds(Alive, _u32, _text, _blob, _u16, _blob, _blob),
        st.builds(Suspect, _u32, _text, _text),
        st.builds(Ack, _u32, _blob),
        st.builds(ErrResp, _text),
    )
)
@settings(max_examples=300, deadline=None)
def test_memberlist_round_trip_property(msg: Message) -> None:
    assert decode_message(msg.encode()) == msg


@given(st.dictionaries(_text, _text, max_size=8))
@settings(max_examples=200, deadline=None)
def test_tags_round_trip_property(tags: dict[str, str]) -> None:
    assert decode_tags(encode_tags(tags)) == tags


def _only_decode_error(fn: Any, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        fn(data)


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_random_bytes_only_decode_error(data: bytes) -> None:
    _only_decode_error(decode_message, data)
    _only_decode_error(decode_serf_message, data)
    _only_decode_error(decode_tags, data)
    _only_decode_error(decode_tags, b"\xff" + data)
    for t in range(6):
        _only_decode_error(decode_serf_message, bytes([t]) + data)
    for t in (0, 1, 2, 3, 4, 5, 11, 13):
        _only_decode_error(decode_message, bytes([t]) + data)


_VALID = (
    [m.encode() for m in MEMBERLIST_MESSAGES],
    [m.encode() for m in SERF_MESSAGES],
    [encode_tags({"role": "web", "dc": "x1"})],
)


@given(
    st.integers(0, 2),
    st.integers(0, 100),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10_000),
)
@settings(max_examples=1000, deadline=None)
def test_mutated_only_decode_error(
    kind: int, which: int, flips: list[tuple[int, int]], cut: int
) -> None:
    pool = _VALID[kind]
    data = bytearray(pool[which % len(pool)])
    for pos, val in flips:
        data[pos % len(data)] = val
    fn = (decode_message, decode_serf_message, decode_tags)[kind]
    _only_decode_error(fn, bytes(data))
    _only_decode_error(fn, bytes(data[: cut % (len(data) + 1)]))
