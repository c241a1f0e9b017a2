"""memberlist 0.2.2 message types and their Go struct schemas.

Every memberlist message on the wire is ``[type byte][msgpack struct]`` (PROTOCOL.md
section 2.1/2.2). This module only knows single messages; the packet pipeline
(compound, compress, CRC, encryption) lives in ``serfd.wire.packet`` and stream framing
(push/pull) in ``serfd.wire.framing``.

Each message is a small frozen dataclass with a ``TYPE`` and a ``SCHEMA``.
``msg.encode()`` gives the bytes including the type byte; ``decode_message(data)``
reads them back and raises :class:`~serfd.wire.codec.DecodeError` on anything malformed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Self, TypeVar

from serfd.wire.codec import (
    BOOL,
    BYTES,
    INT,
    STR,
    UINT8,
    UINT16,
    UINT32,
    DecodeError,
    Field,
    decode_struct,
    encode_struct,
)


class MsgType(IntEnum):
    """memberlist message type bytes (net.go messageType)."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13


class NodeStateType(IntEnum):
    """memberlist node states as carried in push/pull (state.go NodeStateType)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# memberlist protocol versions: min 1, max 5, and Serf pins the current one to 2.
# Serf's delegate protocol: min 2, max 5, current 5 (the agent default).
SERF_PROTOCOL_MIN = 2  # Serf's ProtocolVersionMin ("Understands back to" in `version`)
SERF_PROTOCOL_MAX = 5  # Serf's ProtocolVersionMax ("Agent Protocol")
DEFAULT_VSN = bytes([1, 5, 2, SERF_PROTOCOL_MIN, SERF_PROTOCOL_MAX, SERF_PROTOCOL_MAX])
META_MAX_SIZE = 512  # memberlist MetaMaxSize


def ip_to_bytes(ip: str) -> bytes:
    """Pack an IP address as Go's net.IP does on the wire (4 bytes for IPv4)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed


def bytes_to_ip(raw: bytes) -> str:
    """Read a Go net.IP (4 or 16 bytes; IPv4-mapped IPv6 becomes IPv4)."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"  # str(IPv4Address(raw)), faster
    if len(raw) == 16:
        addr = ipaddress.IPv6Address(raw)
        return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)
    raise DecodeError(f"bad IP length {len(raw)}")


M = TypeVar("M", bound="Message")


@dataclass(frozen=True, slots=True)
class Message:
    """Base of memberlist messages: ``TYPE`` byte plus a Go struct ``SCHEMA``."""

    TYPE: ClassVar[int]
    SCHEMA: ClassVar[tuple[Field, ...]]

    def body(self) -> bytes:
        """The msgpack struct alone (no type byte)."""
        return encode_struct(self.SCHEMA, {f.attr: getattr(self, f.attr) for f in self.SCHEMA})

    def encode(self) -> bytes:
        """Type byte followed by the msgpack struct."""
        if self.TYPE not in _MEMO_TYPES:
            return bytes((self.TYPE,)) + self.body()
        try:
            data = _ENCODED.get(self)
        except TypeError:  # a field given as a mutable (bytearray): not hashable
            return bytes((self.TYPE,)) + self.body()
        if data is None:
            if len(_ENCODED) >= MEMO_SIZE:
                _ENCODED.clear()
            data = _ENCODED[self] = bytes((self.TYPE,)) + self.body()
        return data

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        """Decode the struct that follows the type byte."""
        return cls(**decode_struct(cls.SCHEMA, body))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Self:
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE = MsgType.PING
    SCHEMA = (
        Field("seq_no", "SeqNo", UINT32),
        Field("node", "Node", STR),
        Field("source_addr", "SourceAddr", BYTES, omitempty=True),
        Field("source_port", "SourcePort", UINT16, omitempty=True),
        Field("source_node", "SourceNode", STR, omitempty=True),
    )
    seq_no: int
    node: str
    source_addr: bytes | None = None
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class IndirectPing(Message):
    TYPE = MsgType.INDIRECT_PING
    SCHEMA = (
        Field("seq_no", "SeqNo", UINT32),
        Field("target", "Target", BYTES),
        Field("port", "Port", UINT16),
        Field("node", "Node", STR),
        Field("nack", "Nack", BOOL),
        Field("source_addr", "SourceAddr", BYTES, omitempty=True),
        Field("source_port", "SourcePort", UINT16, omitempty=True),
        Field("source_node", "SourceNode", STR, omitempty=True),
    )
    seq_no: int
    target: bytes | None
    port: int
    node: str
    nack: bool = False
    source_addr: bytes | None = None
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class Ack(Message):
    TYPE = MsgType.ACK
    SCHEMA = (Field("seq_no", "SeqNo", UINT32), Field("payload", "Payload", BYTES))
    seq_no: int
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class Nack(Message):
    TYPE = MsgType.NACK
    SCHEMA = (Field("seq_no", "SeqNo", UINT32),)
    seq_no: int


@dataclass(frozen=True, slots=True)
class Suspect(Message):
    TYPE = MsgType.SUSPECT
    SCHEMA = (
        Field("incarnation", "Incarnation", UINT32),
        Field("node", "Node", STR),
        Field("from_", "From", STR),
    )
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True, slots=True)
class Dead(Message):
    TYPE = MsgType.DEAD
    SCHEMA = Suspect.SCHEMA
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True, slots=True)
class Alive(Message):
    TYPE = MsgType.ALIVE
    SCHEMA = (
        Field("incarnation", "Incarnation", UINT32),
        Field("node", "Node", STR),
        Field("addr", "Addr", BYTES),
        Field("port", "Port", UINT16),
        Field("meta", "Meta", BYTES),
        Field("vsn", "Vsn", BYTES),
    )
    incarnation: int
    node: str
    addr: bytes | None
    port: int
    meta: bytes | None = None
    vsn: bytes | None = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class ErrResp(Message):
    TYPE = MsgType.ERR
    SCHEMA = (Field("error", "Error", STR),)
    error: str


@dataclass(frozen=True, slots=True)
class PushPullHeader(Message):
    TYPE = MsgType.PUSH_PULL
    SCHEMA = (
        Field("nodes", "Nodes", INT),
        Field("user_state_len", "UserStateLen", INT),
        Field("join", "Join", BOOL),
    )
    nodes: int
    user_state_len: int
    join: bool


@dataclass(frozen=True, slots=True)
class PushNodeState(Message):
    """One node's entry in a push/pull (no type byte of its own on the wire)."""

    TYPE = -1
    SCHEMA = (
        Field("name", "Name", STR),
        Field("addr", "Addr", BYTES),
        Field("port", "Port", UINT16),
        Field("meta", "Meta", BYTES),
        Field("incarnation", "Incarnation", UINT32),
        Field("state", "State", INT),
        Field("vsn", "Vsn", BYTES),
    )
    name: str
    addr: bytes | None
    port: int
    meta: bytes | None
    incarnation: int
    state: int
    vsn: bytes | None = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class UserMsgHeader(Message):
    """Header of a user message on a TCP stream; the raw bytes follow it."""

    TYPE = MsgType.USER
    SCHEMA = (Field("user_msg_len", "UserMsgLen", INT),)
    user_msg_len: int


@dataclass(frozen=True, slots=True)
class Compress(Message):
    TYPE = MsgType.COMPRESS
    SCHEMA = (Field("algo", "Algo", UINT8), Field("buf", "Buf", BYTES))
    algo: int
    buf: bytes | None


# Messages that can stand alone in a UDP packet (after the pipeline has been
# unwrapped). USER is handled by the packet layer (its body is raw bytes).
_DECODERS: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (Ping, IndirectPing, Ack, Nack, Suspect, Alive, Dead, ErrResp)
}


@dataclass(frozen=True, slots=True)
class UserData:
    """A memberlist user message (type 8): the payload belongs to the Serf layer."""

    TYPE: ClassVar[int] = MsgType.USER
    data: bytes

    def encode(self) -> bytes:
        return bytes((MsgType.USER,)) + self.data


AnyMessage = Message | UserData


# Gossip (alive, suspect, dead) travels as the same bytes from node to node and is
# retransmitted, so the same message is encoded and decoded over and over: in one
# process by every push/pull merge and every copy heard, and in the simulator by every
# node. The messages are frozen, so both directions are remembered (bounded: the memo
# starts afresh when full). Pings and acks are unique and not remembered.
MEMO_SIZE = 4096
_MEMO_TYPES = frozenset({MsgType.SUSPECT, MsgType.ALIVE, MsgType.DEAD})
_ENCODED: dict[Message, bytes] = {}
_DECODED: dict[bytes, Message] = {}


def decode_message(data: bytes) -> AnyMessage:
    """Decode one plain message ``[type][body]`` (not compound/compressed/CRC)."""
    if not data:
        raise DecodeError("empty message")
    t = data[0]
    if t == MsgType.USER:
        return UserData(bytes(data[1:]))
    cls = _DECODERS.get(t)
    if cls is None:
        raise DecodeError(f"unexpected message type {t}")
    if t not in _MEMO_TYPES:
        return cls.from_body(bytes(data[1:]))
    key = bytes(data)
    msg = _DECODED.get(key)
    if msg is None:
        msg = cls.from_body(key[1:])
        if len(_DECODED) >= MEMO_SIZE:
            _DECODED.clear()
        _DECODED[key] = msg
    return msg
