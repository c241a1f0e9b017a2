"""The UDP packet pipeline of memberlist 0.2.2: compound, compress, CRC, encryption.

Theory of operation
-------------------
A datagram carries one or more plain messages ``[type][msgpack]`` (see
``serfd.wire.messages``). On the way out (PROTOCOL.md section 2.3) the layers are, from
the inside out:

1. **compound** ``[7][count u8][count x u16 BE length][part]...`` when there is
   more than one message (one message goes bare);
2. **compress** ``[9][msgpack compress{Algo: 0, Buf: lzw(...)}]``, used only when
   it is shorter than what it wraps;
3. **CRC** ``[12][crc32 IEEE, u32 BE, of the rest][rest]``, outermost only;
4. **encryption** of the whole datagram by the keyring (AAD empty on UDP).

``decode_packet`` undoes them in the opposite order and returns the plain
messages in order. Encryption and CRC exist only at the top; compress and
compound may nest (Go dispatches every compound part through the same handler,
so a part can itself be compressed, or even another compound). Nesting is
bounded by :data:`MAX_NESTING` and the total decompressed size by ``max_size``.

Errors follow Go's handler: garbage in the datagram as a whole raises
:class:`~serfd.wire.codec.DecodeError`; a bad *part* of a compound is dropped and the
other parts survive (Go logs it and goes on); a compound whose lengths run past
the end yields the parts that were whole. Only message types memberlist handles
on UDP come out (ping, indirect ping, ack, suspect, alive, dead, user, nack);
Go drops any other type, and so do we.

The keyring is a seam: any object with ``encrypt(data, aad)`` and
``decrypt(data, aad)`` (the latter raising ``DecodeError`` when no key fits).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import Protocol

from serfd.wire import lzw
from serfd.wire.codec import DecodeError
from serfd.wire.messages import Compress, MsgType

__all__ = [
    "COMPOUND_HEADER_OVERHEAD",
    "COMPOUND_OVERHEAD",
    "CRC_OVERHEAD",
    "GO_SAFE_COMPOUND_PARTS",
    "MAX_COMPOUND_PARTS",
    "MAX_NESTING",
    "PACKET_MAX_DECOMPRESSED",
    "UDP_MESSAGE_TYPES",
    "Keyring",
    "compound_size",
    "compress_message",
    "decode_packet",
    "decompress_message",
    "encode_packet",
    "make_compound",
]

# memberlist net.go: compoundHeaderOverhead (type + count) and compoundOverhead
# (the u16 length each part adds). Budgets use them the way Go does.
COMPOUND_HEADER_OVERHEAD = 2
COMPOUND_OVERHEAD = 2
CRC_OVERHEAD = 5  # [12] + u32
# The count is a u8 in makeCompoundMessage. NB: memberlist 0.2.2's decoder computes
# the length table size as uint8(count*2), so a Go peer misreads compounds of 128
# or more parts (and can panic on them). Keep real traffic far below that.
MAX_COMPOUND_PARTS = 255
GO_SAFE_COMPOUND_PARTS = 127
# compress(compound(compress(part))) is the deepest Go ever produces; allow some slack.
MAX_NESTING = 8
# A datagram is at most 64 KiB; its decompressed content has no business being
# larger than this. (memberlist itself has no cap; an LZW bomb could inflate a
# datagram about a thousandfold.)
PACKET_MAX_DECOMPRESSED = 1024 * 1024

# The types memberlist's handleCommand accepts on UDP once the wrappers are gone.
UDP_MESSAGE_TYPES = frozenset(
    {
        MsgType.PING,
        MsgType.INDIRECT_PING,
        MsgType.ACK,
        MsgType.SUSPECT,
        MsgType.ALIVE,
        MsgType.DEAD,
        MsgType.USER,
        MsgType.NACK,
    }
)

_LZW_ALGO = 0  # memberlist lzwAlgo, the only compression algorithm
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class Keyring(Protocol):
    """The encryption seam (``serfd.wire.keyring`` implements it)."""

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        """Encrypt with the primary key: ``[vsn][nonce][ciphertext+tag]``."""
        ...

    def decrypt(self, data: bytes, aad: bytes) -> bytes:
        """Try every key; raise ``DecodeError`` (a ``keyring.DecryptError``) when none fits."""
        ...


def compound_size(sizes: Iterable[int]) -> int:
    """Bytes a compound of parts with these lengths takes (Go's overhead accounting)."""
    total = COMPOUND_HEADER_OVERHEAD
    for n in sizes:
        total += COMPOUND_OVERHEAD + n
    return total


def make_compound(parts: list[bytes]) -> bytes:
    """``[7][count][u16 BE lengths][parts]``: several messages in one datagram."""
    if len(parts) > MAX_COMPOUND_PARTS:
        raise ValueError(f"compound of {len(parts)} parts (max {MAX_COMPOUND_PARTS})")
    out = bytearray((MsgType.COMPOUND, len(parts)))
    for p in parts:
        if not p:
            # Go's handleCommand indexes buf[0] unchecked: an empty part crashes a Go peer
            # (verified: serf 0.9.4 panics on the datagram 07 01 00 00).
            raise ValueError("empty compound part")
        if len(p) > 0xFFFF:
            raise ValueError(f"compound part of {len(p)} bytes does not fit a u16 length")
        out += _U16.pack(len(p))
    for p in parts:
        out += p
    return bytes(out)


def compress_message(msg: bytes) -> bytes:
    """``[9][msgpack compress{Algo: 0, Buf: lzw(msg)}]`` (memberlist compressPayload)."""
    return Compress(algo=_LZW_ALGO, buf=lzw.compress(msg)).encode()


def decompress_message(body: bytes, max_size: int = lzw.DEFAULT_MAX_SIZE) -> bytes:
    """Undo :func:`compress_message` given the bytes after the ``[9]`` type byte."""
    c = Compress.from_body(body)
    if c.algo != _LZW_ALGO:
        raise DecodeError(f"cannot decompress unknown algorithm {c.algo}")
    return lzw.decompress(c.buf or b"", max_size=max_size)


def encode_packet(
    parts: list[bytes], *, compress: bool, crc: bool, keyring: Keyring | None = None
) -> bytes:
    """Wrap plain messages into one datagram: compound, compress if shorter, CRC, encrypt."""
    if not parts or not all(parts):
        # An empty message makes memberlist 0.2.2 index buf[0] of nothing: the Go agent panics.
        raise ValueError("no messages to send, or an empty one")
    msg = parts[0] if len(parts) == 1 else make_compound(parts)
    if compress:
        packed = compress_message(msg)
        if len(packed) < len(msg):
            msg = packed
    if crc:
        msg = bytes((MsgType.HAS_CRC,)) + _U32.pack(zlib.crc32(msg)) + msg
    if keyring is not None:
        msg = keyring.encrypt(msg, b"")
    return msg


def decode_packet(
    data: bytes,
    *,
    keyring: Keyring | None = None,
    verify_incoming: bool = True,
    max_size: int = PACKET_MAX_DECOMPRESSED,
) -> list[bytes]:
    """Unwrap a datagram into its plain messages ``[type][body]``, in order.

    With a keyring the datagram must decrypt, unless ``verify_incoming`` is False,
    in which case an undecryptable datagram is read as plaintext (memberlist's
    GossipVerifyIncoming). ``max_size`` caps the total decompressed bytes.
    """
    buf = bytes(data)
    if keyring is not None:
        try:
            buf = keyring.decrypt(buf, b"")
        except DecodeError:
            if verify_incoming:
                raise
    if len(buf) >= CRC_OVERHEAD and buf[0] == MsgType.HAS_CRC:
        (expected,) = _U32.unpack_from(buf, 1)
        buf = buf[CRC_OVERHEAD:]
        if zlib.crc32(buf) != expected:
            raise DecodeError("bad CRC")
    out: list[bytes] = []
    _Unwrapper(max_size).dispatch(buf, out, 0)
    return out


class _Unwrapper:
    """Recursive compress/compound unwrapping with one decompression budget per datagram."""

    __slots__ = ("budget",)

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def dispatch(self, buf: bytes, out: list[bytes], depth: int) -> None:
        if not buf:
            raise DecodeError("missing message type byte")
        if depth > MAX_NESTING:
            raise DecodeError("wrappers nested too deep")
        t = buf[0]
        if t == MsgType.COMPOUND:
            for part in _split_compound(buf):
                try:
                    self.dispatch(part, out, depth + 1)
                except DecodeError:
                    continue  # Go logs the bad part and handles the others
        elif t == MsgType.COMPRESS:
            plain = decompress_message(buf[1:], max_size=self.budget)
            self.budget -= len(plain)
            self.dispatch(plain, out, depth + 1)
        elif t in UDP_MESSAGE_TYPES:
            out.append(buf)
        else:
            raise DecodeError(f"message type {t} not supported on UDP")


def _split_compound(buf: bytes) -> list[bytes]:
    """The whole parts of ``[7][count][lengths][parts]``; trailing cut-off parts are dropped."""
    if len(buf) < 2:
        raise DecodeError("missing compound length byte")
    count = buf[1]
    start = 2 + 2 * count
    if len(buf) < start:
        raise DecodeError("truncated compound length table")
    parts: list[bytes] = []
    pos = start
    for i in range(count):
        (n,) = _U16.unpack_from(buf, 2 + 2 * i)
        if pos + n > len(buf):
            break  # truncated: Go keeps the parts before this one
        parts.append(buf[pos : pos + n])
        pos += n
    return parts
