"""msgpack the way Serf 0.9.4's go-msgpack 0.5.5 writes and reads it.

Theory of operation
-------------------
Two dialects are in play (PROTOCOL.md section 1):

* **Gossip** (memberlist and Serf messages, tags in node meta): Go structs become
  maps keyed by the Go field name, *sorted by name*; both Go ``string`` and
  ``[]byte`` travel in the old "raw" family (fixstr, str16, str32, never str8 or
  bin). ``msgpack.packb(..., use_bin_type=False)`` writes exactly that, provided
  we sort the keys ourselves. On receive everything raw comes back as ``bytes``
  and the schema says which fields are text.
* **RPC**: strings are str (str8 allowed), ``[]byte`` is bin. See ``serfd.agent.rpc_server``.

A *schema* is a tuple of :class:`Field` describing one Go struct. ``encode_struct``
and ``decode_struct`` turn a plain ``dict`` of Python values into wire bytes and
back, checking types on the way in: a peer that sends the wrong type for a field
gets a :class:`DecodeError`, never an exception from deep inside our code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "DecodeError",
    "Field",
    "decode_struct",
    "encode_struct",
    "obj_to_struct",
    "pack_gossip",
    "struct_to_obj",
    "unpack_gossip",
]


class DecodeError(ValueError):
    """A peer sent bytes we cannot make sense of (counted and dropped, never raised to the loop)."""


# Field kinds. Ints are range-checked against their Go type.
UINT8 = "u8"
UINT16 = "u16"
UINT32 = "u32"
UINT64 = "u64"
INT = "int"  # Go int / int64 (time.Duration too)
BOOL = "bool"
STR = "str"  # Go string: raw family on the wire, UTF-8 text here
BYTES = "bytes"  # Go []byte: raw family on the wire, bytes here (None = nil)
ANY = "any"  # left as decoded (raw=True); the owner interprets it

_UINT_MAX = {UINT8: 0xFF, UINT16: 0xFFFF, UINT32: 0xFFFF_FFFF, UINT64: 0xFFFF_FFFF_FFFF_FFFF}


@dataclass(frozen=True, slots=True)
class Field:
    """One Go struct field: Python attribute name, Go field name, kind, omitempty."""

    attr: str
    go: str
    kind: str
    omitempty: bool = False


def pack_gossip(obj: Any) -> bytes:
    """Pack a Python value in go-msgpack's gossip dialect (raw strings, no bin)."""
    return msgpack.packb(obj, use_bin_type=False)  # type: ignore[no-any-return]


def unpack_gossip(data: bytes) -> Any:
    """Unpack one complete gossip-dialect object; trailing bytes or garbage raise DecodeError."""
    try:
        return msgpack.unpackb(data, raw=True, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException, MemoryError, RecursionError) as e:
        # msgpack raises ExtraData / FormatError / StackError / OutOfData (all ValueError
        # subclasses) for the usual garbage; anything else is still the peer's fault.
        raise DecodeError(f"bad msgpack: {e.__class__.__name__}") from None


def _zero(kind: str) -> Any:
    if kind in (UINT8, UINT16, UINT32, UINT64, INT):
        return 0
    if kind == BOOL:
        return False
    if kind == STR:
        return ""
    return None


def _is_empty(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind in (STR, BYTES, ANY) and hasattr(value, "__len__"):
        return len(value) == 0
    return bool(value == _zero(kind))


def struct_to_obj(schema: tuple[Field, ...], values: dict[str, Any]) -> dict[bytes, Any]:
    """Build the map go-msgpack would write for a struct (keys sorted by Go name)."""
    out: dict[bytes, Any] = {}
    for f in sorted(schema, key=lambda f: f.go):
        v = values.get(f.attr, _zero(f.kind))
        if f.omitempty and _is_empty(f.kind, v):
            continue
        if f.kind == STR:
            v = (v or "").encode("utf-8", "surrogateescape")
        elif f.kind == BYTES and v is not None:
            v = bytes(v)
        out[f.go.encode()] = v
    return out


def encode_struct(schema: tuple[Field, ...], values: dict[str, Any]) -> bytes:
    """Encode a struct, given as attribute values, in the gossip dialect."""
    return pack_gossip(struct_to_obj(schema, values))


def _coerce(f: Field, v: Any) -> Any:
    kind = f.kind
    if kind == ANY:
        return v
    if v is None:
        # go-msgpack decodes nil into any field as its zero value.
        return _zero(kind)
    if kind in _UINT_MAX or kind == INT:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DecodeError(f"field {f.go}: expected integer, got {type(v).__name__}")
        if kind != INT and not 0 <= v <= _UINT_MAX[kind]:
            raise DecodeError(f"field {f.go}: {v} out of range for {kind}")
        if kind == INT and not -(2**63) <= v < 2**63:
            raise DecodeError(f"field {f.go}: {v} out of range for int64")
        return v
    if kind == BOOL:
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise DecodeError(f"field {f.go}: expected bool, got {type(v).__name__}")
    if kind == STR:
        if not isinstance(v, (bytes, str)):
            raise DecodeError(f"field {f.go}: expected string, got {type(v).__name__}")
        if isinstance(v, bytes):
            return v.decode("utf-8", "surrogateescape")
        return v
    if kind == BYTES:
        if isinstance(v, str):
            return v.encode("utf-8", "surrogateescape")
        if not isinstance(v, bytes):
            raise DecodeError(f"field {f.go}: expected bytes, got {type(v).__name__}")
        return v
    raise AssertionError(f"unknown field kind {kind}")


def obj_to_struct(schema: tuple[Field, ...], obj: Any) -> dict[str, Any]:
    """Read a decoded map into attribute values: unknown keys ignored, missing ones zero."""
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a map, got {type(obj).__name__}")
    by_key: dict[bytes, Any] = {}
    for k, v in obj.items():
        if isinstance(k, str):
            k = k.encode("utf-8", "surrogateescape")
        if isinstance(k, bytes):
            by_key[k] = v
    out: dict[str, Any] = {}
    for f in schema:
        out[f.attr] = _coerce(f, by_key.get(f.go.encode()))
    return out


def decode_struct(schema: tuple[Field, ...], data: bytes) -> dict[str, Any]:
    """Decode one gossip-dialect struct from bytes (whole buffer)."""
    return obj_to_struct(schema, unpack_gossip(data))
