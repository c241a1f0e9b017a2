"""Serf's msgpack RPC protocol, shared by the server (serfd.agent.rpc_server) and serfctl.

Theory of operation
-------------------
A client writes msgpack objects back to back with no length prefix (PROTOCOL.md section 4):
a request header ``{Command, Seq}``, then one body for the commands that take one. The
server answers each request with a response header ``{Error, Seq}`` ("" = OK) and, for the
commands that define one, a body; ``stream``, ``monitor`` and ``query`` keep sending records
under the request's Seq until ``stop``. This module holds what both ends must agree on, and
nothing that does IO:

* the command names (:class:`Command`), :data:`IPC_VERSION`, :data:`DEFAULT_RPC_PORT`, and
  the error strings exactly as Serf's agent spells them (clients match on them);
* :data:`REQUEST_SCHEMAS`: every command's request body, with converters that accept what
  Go's decoder accepts and raise :class:`BadRequest` for the rest;
* the encoders of what the server sends: headers, ``Member`` structs, event and query
  records (Go's field order, str for strings, bin for ``[]byte``, nil for an empty one);
* :func:`filter_members`: ``members-filtered`` with Serf's anchored Go regexes, run by
  serfd's linear-time engine.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import msgpack

from serfd.base.goregexp import Regexp
from serfd.base.goregexp import compile as go_compile
from serfd.core.coordinate import Coordinate, decode_coordinate
from serfd.core.member import Member
from serfd.core.query import IncomingQuery
from serfd.core.serf import UserEvent

__all__ = [
    "DEFAULT_RPC_PORT",
    "IPC_VERSION",
    "MUTATING_COMMANDS",
    "REQUEST_SCHEMAS",
    "BadRequest",
    "Command",
    "Coordinate",
    "decode_body",
    "decode_coordinate_response",
    "decode_header",
    "encode_coordinate_response",
    "encode_event_record",
    "encode_member",
    "encode_query_record",
    "filter_members",
    "pack",
    "pack_header",
    "pack_request",
]

IPC_VERSION = 1  # Serf's MinIPCVersion == MaxIPCVersion == 1
DEFAULT_RPC_PORT = 7373  # Serf's default rpc_addr port
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class Command(StrEnum):
    """Every command of Serf 0.9.4's RPC, plus serfd's ``reload`` and ``reset-tags``."""

    HANDSHAKE = "handshake"
    AUTH = "auth"
    EVENT = "event"
    FORCE_LEAVE = "force-leave"
    JOIN = "join"
    MEMBERS = "members"
    MEMBERS_FILTERED = "members-filtered"
    TAGS = "tags"
    STREAM = "stream"
    MONITOR = "monitor"
    STOP = "stop"
    LEAVE = "leave"
    QUERY = "query"
    RESPOND = "respond"
    INSTALL_KEY = "install-key"
    USE_KEY = "use-key"
    REMOVE_KEY = "remove-key"
    LIST_KEYS = "list-keys"
    STATS = "stats"
    GET_COORDINATE = "get-coordinate"
    RELOAD = "reload"  # serfd's own: re-read the drop-ins
    RESET_TAGS = "reset-tags"  # serfd's own: drop runtime tag changes


# Error strings clients see, exactly as Serf's agent/ipc.go spells them.
ERR_UNSUPPORTED_COMMAND = "Unsupported command"
ERR_UNSUPPORTED_VERSION = "Unsupported IPC version"
ERR_DUPLICATE_HANDSHAKE = "Handshake already performed"
ERR_HANDSHAKE_REQUIRED = "Handshake required"
ERR_AUTH_REQUIRED = "Authentication required"
ERR_INVALID_AUTH = "Invalid authentication token"
ERR_MONITOR_EXISTS = "Monitor already exists"
ERR_INVALID_FILTER = "Invalid event filter"
ERR_STREAM_EXISTS = "Stream with given sequence exists"
ERR_INVALID_QUERY_ID = "No pending queries matching ID"
ERR_TOO_MANY_STREAMS = "Too many streams on this connection"  # ours: Serf has no cap
# Errors after which Serf sends no body even for a command that has one.
ERRORS_WITHOUT_BODY = frozenset({ERR_UNSUPPORTED_COMMAND, ERR_HANDSHAKE_REQUIRED,
                                 ERR_AUTH_REQUIRED})

MUTATING_COMMANDS = frozenset({
    "join", "leave", "force-leave", "tags", "event", "query", "respond",
    "install-key", "use-key", "remove-key", "reload", "reset-tags",
})


# ---------------------------------------------------------------------------
# Request bodies: field converters that accept what Go's decoder accepts.


class BadRequest(Exception):
    """The client sent something Serf's decoder refuses; ``key`` names the counter."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(detail)
        self.key = key


def _bad(field: str, value: Any) -> BadRequest:
    return BadRequest("bad_field_type", f"field {field}: unexpected {type(value).__name__}")


def _to_str(field: str, v: Any) -> str:
    # A Go string field takes str or nil; bin is a decode error (PROTOCOL.md 1.1).
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise _bad(field, v)


def _to_bytes(field: str, v: Any) -> bytes:
    # A Go []byte field takes bin, str (serfclient sends str payloads) or nil.
    if v is None:
        return b""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    raise _bad(field, v)


def _to_bool(field: str, v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _bad(field, v)


def _int_field(lo: int, hi: int) -> Callable[[str, Any], int]:
    def conv(field: str, v: Any) -> int:
        if v is None:
            return 0
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
        raise _bad(field, v)

    return conv


def _to_str_list(field: str, v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [_to_str(field, x) for x in v]
    raise _bad(field, v)


def _to_str_map(field: str, v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if isinstance(v, dict):
        return {_to_str(field, k): _to_str(field, x) for k, x in v.items()}
    raise _bad(field, v)


_to_i32 = _int_field(-(1 << 31), (1 << 31) - 1)
_to_u8 = _int_field(0, 0xFF)
_to_u64 = _int_field(0, _U64_MAX)
_to_i64 = _int_field(-(1 << 63), (1 << 63) - 1)

Schema = dict[str, Callable[[str, Any], Any]]

# Every Serf 0.9.4 command and its request body (None: the command has no body).
# Kept complete so "Authentication required" can consume the body of any of them.
REQUEST_SCHEMAS: dict[str, Schema | None] = {
    "handshake": {"Version": _to_i32},
    "auth": {"AuthKey": _to_str},
    "event": {"Name": _to_str, "Payload": _to_bytes, "Coalesce": _to_bool},
    "force-leave": {"Node": _to_str, "Prune": _to_bool},
    "join": {"Existing": _to_str_list, "Replay": _to_bool},
    "members": None,
    "members-filtered": {"Tags": _to_str_map, "Status": _to_str, "Name": _to_str},
    "tags": {"Tags": _to_str_map, "DeleteTags": _to_str_list},
    "stream": {"Type": _to_str},
    "monitor": {"LogLevel": _to_str},
    "stop": {"Stop": _to_u64},
    "leave": None,
    "query": {
        "FilterNodes": _to_str_list,
        "FilterTags": _to_str_map,
        "RequestAck": _to_bool,
        "RelayFactor": _to_u8,
        "Timeout": _to_i64,  # time.Duration, nanoseconds
        "Name": _to_str,
        "Payload": _to_bytes,
    },
    "respond": {"ID": _to_u64, "Payload": _to_bytes},
    "install-key": {"Key": _to_str},
    "use-key": {"Key": _to_str},
    "remove-key": {"Key": _to_str},
    "list-keys": None,
    "stats": None,
    "get-coordinate": {"Node": _to_str},
    # serfd's own: re-read the drop-ins; the reply's Error is "" or the config errors.
    "reload": None,
    # serfd's own: drop the runtime tag changes of Keys (none: all), back to [tags].
    "reset-tags": {"Keys": _to_str_list},
}


def decode_body(schema: Schema, obj: Any) -> dict[str, Any]:
    """A request body as Go decodes it: unknown keys ignored, missing ones zero."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise BadRequest("bad_field_type", f"body is a {type(obj).__name__}, not a map")
    return {name: conv(name, obj.get(name)) for name, conv in schema.items()}


def decode_header(obj: Any) -> tuple[str, int]:
    if not isinstance(obj, dict):
        raise BadRequest("bad_field_type", f"header is a {type(obj).__name__}, not a map")
    return _to_str("Command", obj.get("Command")), _to_u64("Seq", obj.get("Seq"))


# ---------------------------------------------------------------------------
# Response bodies.


@functools.lru_cache(maxsize=4096)  # `members` asks this for every member on every call
def _ip_bytes(addr: str) -> bytes | None:
    # Go net.IP: 4 bytes for IPv4, 16 for IPv6; a nil IP (empty []byte) encodes as nil.
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed


def encode_member(m: Member) -> dict[str, Any]:
    """A member as Serf's RPC ``Member`` struct (keys in Go's alphabetical order)."""
    return {
        "Addr": _ip_bytes(m.addr),
        "DelegateCur": m.delegate_cur,
        "DelegateMax": m.delegate_max,
        "DelegateMin": m.delegate_min,
        "Name": m.name,
        "Port": m.port,
        "ProtocolCur": m.protocol_cur,
        "ProtocolMax": m.protocol_max,
        "ProtocolMin": m.protocol_min,
        "Status": m.status.label,
        "Tags": dict(m.tags),
    }


def encode_coordinate_response(coord: Coordinate | None) -> dict[str, Any]:
    """The get-coordinate body ({Coord, Ok}); for an unknown node Go's zero Coordinate:
    zero floats and a nil Vec, with Ok false."""
    if coord is None:
        return {"Coord": {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None},
                "Ok": False}
    return {"Coord": {"Adjustment": float(coord.adjustment), "Error": float(coord.error),
                      "Height": float(coord.height), "Vec": [float(v) for v in coord.vec]},
            "Ok": True}


def decode_coordinate_response(body: Any) -> Coordinate | None:
    """What Serf's client makes of a get-coordinate body: the coordinate when Ok, else
    None; BadRequest when the body is not of that shape."""
    if not isinstance(body, dict):
        raise BadRequest("bad_field_type", f"body is a {type(body).__name__}, not a map")
    if not _to_bool("Ok", body.get("Ok")):
        return None
    try:
        return decode_coordinate(body.get("Coord"))
    except ValueError as e:
        raise BadRequest("bad_field_type", str(e)) from None


def _anchored(expr: str) -> Regexp:
    # Serf compiles "^" + expr + "$" with Go's regexp (text concatenation, no group: an
    # "a|b" filter is "^a|b$"); "$" is the end of the text. Linear time: serfd/goregexp.py.
    return go_compile(f"^{expr}$")


def filter_members(
    members: list[Member], tags: dict[str, str], status: str, name: str
) -> list[Member]:
    """Serf's members-filtered: anchored Go regexes, "" = no filter; GoRegexpError if one is bad."""
    tag_res = {k: _anchored(v) for k, v in tags.items()}
    status_re = _anchored(status)
    name_re = _anchored(name)
    out = []
    for m in members:
        # A missing tag matches as "" (Go's map lookup zero value).
        if not all(r.search(m.tags.get(k, "")) for k, r in tag_res.items()):
            continue
        if status and not status_re.search(m.status.label):
            continue
        if name and not name_re.search(m.name):
            continue
        out.append(m)
    return out


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def pack_header(seq: int, error: str) -> bytes:
    return pack({"Error": error, "Seq": seq})


def pack_request(command: str, seq: int, body: Any = None, *, with_body: bool = False) -> bytes:
    """A request header, then the body when the command takes one."""
    data = pack({"Command": command, "Seq": seq})
    if with_body or body is not None:
        data += pack(body)
    return data



def encode_query_record(qid: int, q: IncomingQuery) -> dict[str, Any]:
    """A query delivered to a ``stream``: the ID is the connection's handle for ``respond``."""
    return {"Event": "query", "ID": qid, "LTime": q.ltime, "Name": q.name,
            "Payload": q.payload or None}


def encode_event_record(ev: Any) -> dict[str, Any]:
    """A user or member event as a ``stream`` record."""
    if isinstance(ev, UserEvent):
        return {"Coalesce": ev.coalesce, "Event": "user", "LTime": ev.ltime,
                "Name": ev.name, "Payload": ev.payload or None}
    return {"Event": ev.type.value, "Members": [encode_member(m) for m in ev.members]}
