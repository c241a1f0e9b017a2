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


# Each schema is compiled once into the steps both directions take per field (the hot
# path of every datagram): the key bytes, the field, its zero and its coercion.
_Steps = tuple[tuple[str, bytes, "Field", Any], ...]
_DECODE_PLANS: dict[int, tuple[tuple[Field, ...], _Steps]] = {}
_ENCODE_PLANS: dict[int, tuple[tuple[Field, ...], _Steps]] = {}


def _decode_plan(schema: tuple[Field, ...]) -> _Steps:
    plan = _DECODE_PLANS.get(id(schema))
    if plan is None or plan[0] is not schema:
        steps = tuple((f.attr, f.go.encode(), f, _COERCERS[f.kind]) for f in schema)
        plan = (schema, steps)
        _DECODE_PLANS[id(schema)] = plan
    return plan[1]


def _encode_plan(schema: tuple[Field, ...]) -> _Steps:
    plan = _ENCODE_PLANS.get(id(schema))
    if plan is None or plan[0] is not schema:
        steps = tuple((f.attr, f.go.encode(), f, _zero(f.kind))
                      for f in sorted(schema, key=lambda f: f.go))
        plan = (schema, steps)
        _ENCODE_PLANS[id(schema)] = plan
    return plan[1]


def struct_to_obj(schema: tuple[Field, ...], values: dict[str, Any]) -> dict[bytes, Any]:
    """Build the map go-msgpack would write for a struct (keys sorted by Go name)."""
    out: dict[bytes, Any] = {}
    for attr, key, f, zero in _encode_plan(schema):
        v = values.get(attr, zero)
        if f.omitempty and _is_empty(f.kind, v):
            continue
        if f.kind == STR:
            v = (v or "").encode("utf-8", "surrogateescape")
        elif f.kind == BYTES and v is not None:
            v = bytes(v)
        out[key] = v
    return out


def encode_struct(schema: tuple[Field, ...], values: dict[str, Any]) -> bytes:
    """Encode a struct, given as attribute values, in the gossip dialect."""
    return pack_gossip(struct_to_obj(schema, values))


# Coercions by kind: a decoded value (None when the key is missing or nil) to the
# Python value of the field, or DecodeError naming the field.
def _coerce_any(f: Field, v: Any) -> Any:
    return v


def _int_coercer(kind: str) -> Any:
    hi = _UINT_MAX.get(kind)

    def coerce(f: Field, v: Any) -> Any:
        if v is None:
            return 0  # go-msgpack decodes nil into any field as its zero value
        if type(v) is not int and (isinstance(v, bool) or not isinstance(v, int)):
            raise DecodeError(f"field {f.go}: expected integer, got {type(v).__name__}")
        if hi is not None:
            if not 0 <= v <= hi:
                raise DecodeError(f"field {f.go}: {v} out of range for {kind}")
        elif not -(2**63) <= v < 2**63:
            raise DecodeError(f"field {f.go}: {v} out of range for int64")
        return v

    return coerce


def _coerce_bool(f: Field, v: Any) -> Any:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise DecodeError(f"field {f.go}: expected bool, got {type(v).__name__}")


def _coerce_str(f: Field, v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if not isinstance(v, str):
        raise DecodeError(f"field {f.go}: expected string, got {type(v).__name__}")
    return v


def _coerce_bytes(f: Field, v: Any) -> Any:
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    raise DecodeError(f"field {f.go}: expected bytes, got {type(v).__name__}")


_COERCERS: dict[str, Any] = {
    ANY: _coerce_any,
    UINT8: _int_coercer(UINT8),
    UINT16: _int_coercer(UINT16),
    UINT32: _int_coercer(UINT32),
    UINT64: _int_coercer(UINT64),
    INT: _int_coercer(INT),
    BOOL: _coerce_bool,
    STR: _coerce_str,
    BYTES: _coerce_bytes,
}


def _coerce(f: Field, v: Any) -> Any:
    return _COERCERS[f.kind](f, v)


def obj_to_struct(schema: tuple[Field, ...], obj: Any) -> dict[str, Any]:
    """Read a decoded map into attribute values: unknown keys ignored, missing ones zero."""
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a map, got {type(obj).__name__}")
    by_key: dict[Any, Any] = obj
    for k in obj:
        if type(k) is not bytes:
            # Keys as text, or of other types (ignored): normalise a copy.
            by_key = {}
            for k2, v in obj.items():
                if isinstance(k2, str):
                    k2 = k2.encode("utf-8", "surrogateescape")
                if isinstance(k2, bytes):
                    by_key[k2] = v
            break
    get = by_key.get
    return {attr: coerce(f, get(key)) for attr, key, f, coerce in _decode_plan(schema)}


def decode_struct(schema: tuple[Field, ...], data: bytes) -> dict[str, Any]:
    """Decode one gossip-dialect struct from bytes (whole buffer)."""
    return obj_to_struct(schema, unpack_gossip(data))
