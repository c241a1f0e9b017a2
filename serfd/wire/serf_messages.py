"""Serf 0.9.4 message types carried inside memberlist user messages.

Every Serf message is ``[serf type byte][msgpack struct]`` in the gossip dialect
(PROTOCOL.md section 3.1/3.2). As a gossip broadcast or a direct UDP message it is
wrapped once more as a memberlist user message ``[8][serf type]...``; as push/pull
user state it travels bare (``[2][messagePushPull]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from serfd.wire.codec import (
    ANY,
    BOOL,
    BYTES,
    INT,
    STR,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    DecodeError,
    Field,
    encode_struct,
    obj_to_struct,
    pack_gossip,
    unpack_gossip,
)
from serfd.wire.messages import MEMO_SIZE


class SerfMsgType(IntEnum):
    """Serf message type bytes (messages.go messageType)."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


# Query flags (query.go): on a query, ACK asks for an ack; on a response, ACK marks it as one.
QUERY_FLAG_ACK = 1
QUERY_FLAG_NO_BROADCAST = 2

# Query filter type bytes.
FILTER_NODE = 0
FILTER_TAG = 1


@dataclass(frozen=True, slots=True)
class SerfMessage:
    TYPE: ClassVar[int]
    SCHEMA: ClassVar[tuple[Field, ...]]

    def to_obj(self) -> dict[str, Any]:
        return {f.attr: getattr(self, f.attr) for f in self.SCHEMA}

    def encode(self) -> bytes:
        """Serf type byte followed by the msgpack struct (no memberlist wrapper)."""
        return bytes((self.TYPE,)) + encode_struct(self.SCHEMA, self.to_obj())


@dataclass(frozen=True, slots=True)
class MessageLeave(SerfMessage):
    TYPE = SerfMsgType.LEAVE
    SCHEMA = (
        Field("ltime", "LTime", UINT64),
        Field("node", "Node", STR),
        Field("prune", "Prune", BOOL),
    )
    ltime: int
    node: str
    prune: bool = False


@dataclass(frozen=True, slots=True)
class MessageJoin(SerfMessage):
    TYPE = SerfMsgType.JOIN
    SCHEMA = (Field("ltime", "LTime", UINT64), Field("node", "Node", STR))
    ltime: int
    node: str


@dataclass(frozen=True, slots=True)
class MessageUserEvent(SerfMessage):
    TYPE = SerfMsgType.USER_EVENT
    SCHEMA = (
        Field("ltime", "LTime", UINT64),
        Field("name", "Name", STR),
        Field("payload", "Payload", BYTES),
        Field("cc", "CC", BOOL),
    )
    ltime: int
    name: str
    payload: bytes | None
    cc: bool = False


@dataclass(frozen=True, slots=True)
class MessageQuery(SerfMessage):
    TYPE = SerfMsgType.QUERY
    SCHEMA = (
        Field("ltime", "LTime", UINT64),
        Field("id", "ID", UINT32),
        Field("addr", "Addr", BYTES),
        Field("port", "Port", UINT16),
        Field("source_node", "SourceNode", STR),
        Field("filters", "Filters", ANY),
        Field("flags", "Flags", UINT32),
        Field("relay_factor", "RelayFactor", UINT8),
        Field("timeout", "Timeout", INT),
        Field("name", "Name", STR),
        Field("payload", "Payload", BYTES),
    )
    ltime: int
    id: int
    addr: bytes | None
    port: int
    source_node: str
    filters: list[bytes] | None
    flags: int
    relay_factor: int
    timeout: int  # nanoseconds
    name: str
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class MessageQueryResponse(SerfMessage):
    TYPE = SerfMsgType.QUERY_RESPONSE
    SCHEMA = (
        Field("ltime", "LTime", UINT64),
        Field("id", "ID", UINT32),
        Field("from_", "From", STR),
        Field("flags", "Flags", UINT32),
        Field("payload", "Payload", BYTES),
    )
    ltime: int
    id: int
    from_: str
    flags: int
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class UserEventRecord:
    """One event inside a push/pull ``userEvents`` slot."""

    name: str
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class UserEvents:
    """All events seen at one event LTime (a slot of the 512-entry ring)."""

    ltime: int
    events: tuple[UserEventRecord, ...]


@dataclass(frozen=True, slots=True)
class MessagePushPull:
    """Serf's push/pull user state (messagePushPull)."""

    TYPE: ClassVar[int] = SerfMsgType.PUSH_PULL
    ltime: int
    status_ltimes: dict[str, int] = field(default_factory=dict)
    left_members: tuple[str, ...] = ()
    event_ltime: int = 0
    events: tuple[UserEvents | None, ...] = ()
    query_ltime: int = 0

    def encode(self) -> bytes:
        events: list[Any] = []
        for slot in self.events:
            if slot is None:
                events.append(None)
                continue
            events.append(
                {
                    b"Events": [
                        {b"Name": e.name.encode("utf-8", "surrogateescape"), b"Payload": e.payload}
                        for e in slot.events
                    ],
                    b"LTime": slot.ltime,
                }
            )
        obj = {
            b"EventLTime": self.event_ltime,
            b"Events": events,
            b"LTime": self.ltime,
            b"LeftMembers": [n.encode("utf-8", "surrogateescape") for n in self.left_members],
            b"QueryLTime": self.query_ltime,
            b"StatusLTimes": {
                k.encode("utf-8", "surrogateescape"): v for k, v in self.status_ltimes.items()
            },
        }
        return bytes((self.TYPE,)) + pack_gossip(obj)

    @classmethod
    def from_body(cls, body: bytes) -> MessagePushPull:
        top = obj_to_struct(_PUSH_PULL_SCHEMA, unpack_gossip(body))
        status: dict[str, int] = {}
        raw_status = top["status_ltimes"] or {}
        if not isinstance(raw_status, dict):
            raise DecodeError("StatusLTimes: expected a map")
        for k, v in raw_status.items():
            if not isinstance(k, (bytes, str)) or isinstance(v, bool) or not isinstance(v, int):
                raise DecodeError("StatusLTimes: bad entry")
            if not 0 <= v < 2**64:
                raise DecodeError("StatusLTimes: out of range")
            name = k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k
            status[name] = v
        left_raw = top["left_members"] or []
        if not isinstance(left_raw, list) or not all(isinstance(n, (bytes, str)) for n in left_raw):
            raise DecodeError("LeftMembers: expected a list of strings")
        left = tuple(
            n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else n for n in left_raw
        )
        slots: list[UserEvents | None] = []
        raw_events = top["events"] or []
        if not isinstance(raw_events, list):
            raise DecodeError("Events: expected a list")
        for slot in raw_events:
            if slot is None:
                slots.append(None)
                continue
            s = obj_to_struct(_USER_EVENTS_SCHEMA, slot)
            recs_raw = s["events"] or []
            if not isinstance(recs_raw, list):
                raise DecodeError("Events[].Events: expected a list")
            recs = []
            for r in recs_raw:
                rv = obj_to_struct(_USER_EVENT_SCHEMA, r)
                recs.append(UserEventRecord(rv["name"], rv["payload"]))
            slots.append(UserEvents(s["ltime"], tuple(recs)))
        return cls(
            ltime=top["ltime"],
            status_ltimes=status,
            left_members=left,
            event_ltime=top["event_ltime"],
            events=tuple(slots),
            query_ltime=top["query_ltime"],
        )


_PUSH_PULL_SCHEMA = (
    Field("ltime", "LTime", UINT64),
    Field("status_ltimes", "StatusLTimes", ANY),
    Field("left_members", "LeftMembers", ANY),
    Field("event_ltime", "EventLTime", UINT64),
    Field("events", "Events", ANY),
    Field("query_ltime", "QueryLTime", UINT64),
)
_USER_EVENTS_SCHEMA = (Field("ltime", "LTime", UINT64), Field("events", "Events", ANY))
_USER_EVENT_SCHEMA = (Field("name", "Name", STR), Field("payload", "Payload", BYTES))

_SIMPLE: dict[int, type[SerfMessage]] = {
    cls.TYPE: cls
    for cls in (MessageLeave, MessageJoin, MessageUserEvent, MessageQuery, MessageQueryResponse)
}

AnySerfMessage = SerfMessage | MessagePushPull

# Intents and user events are gossiped as the same bytes over and over (every copy a
# node hears is decoded): remembered by their bytes, as in serfd.wire.messages. Only
# messages whose fields are all immutable (a query's filters are a list).
_MEMO_TYPES = frozenset({SerfMsgType.LEAVE, SerfMsgType.JOIN, SerfMsgType.USER_EVENT})
_DECODED: dict[bytes, SerfMessage] = {}


def decode_serf_message(data: bytes) -> AnySerfMessage:
    """Decode ``[serf type][struct]``. Relay and key messages are handled by their owners."""
    if not data:
        raise DecodeError("empty serf message")
    t = data[0]
    if t == SerfMsgType.PUSH_PULL:
        return MessagePushPull.from_body(bytes(data[1:]))
    cls = _SIMPLE.get(t)
    if cls is None:
        raise DecodeError(f"unexpected serf message type {t}")
    if t not in _MEMO_TYPES:
        return cls(**obj_to_struct(cls.SCHEMA, unpack_gossip(bytes(data[1:]))))
    key = bytes(data)
    msg = _DECODED.get(key)
    if msg is None:
        msg = cls(**obj_to_struct(cls.SCHEMA, unpack_gossip(key[1:])))
        if len(_DECODED) >= MEMO_SIZE:
            _DECODED.clear()
        _DECODED[key] = msg
    return msg


def encode_tags(tags: dict[str, str]) -> bytes:
    """Tags as node meta for Serf protocol >= 3: 0xFF + msgpack map (serf.go encodeTags)."""
    return b"\xff" + pack_gossip(
        {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
         for k, v in tags.items()}
    )


def decode_tags(meta: bytes | None) -> dict[str, str]:
    """Node meta to tags; a meta not starting with 0xFF is the old bare role tag."""
    if not meta:
        return {"role": ""}
    if meta[0] != 0xFF:
        return {"role": meta.decode("utf-8", "surrogateescape")}
    obj = unpack_gossip(meta[1:])
    if not isinstance(obj, dict):
        raise DecodeError("tags: expected a map")
    out: dict[str, str] = {}
    for k, v in obj.items():
        if not isinstance(k, (bytes, str)) or not isinstance(v, (bytes, str)):
            raise DecodeError("tags: expected string keys and values")
        ks = k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k
        vs = v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
        out[ks] = vs
    return out


__all__ = [
    "FILTER_NODE",
    "FILTER_TAG",
    "QUERY_FLAG_ACK",
    "QUERY_FLAG_NO_BROADCAST",
    "UINT16",
    "MessageJoin",
    "MessageLeave",
    "MessagePushPull",
    "MessageQuery",
    "MessageQueryResponse",
    "MessageUserEvent",
    "SerfMsgType",
    "UserEventRecord",
    "UserEvents",
    "decode_serf_message",
    "decode_tags",
    "encode_tags",
]
