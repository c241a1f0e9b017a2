"""DNS messages as mDNS discovery uses them (RFC 1035 4.1, RFC 6762 18), pure and bounded.

What discovery needs and nothing more: :func:`decode` reads a datagram into its header,
its questions and the records Serf's client looks at (PTR, SRV, TXT, A, AAAA; other types
are skipped), and the ``*_record`` / :func:`message` helpers write a response or a query.

Written here rather than taken from python-zeroconf: its public packet classes are not
the same across the releases serfd meets (``DNSIncoming.answers`` is a property in
Debian 12's 0.47.3 and a method in the compiled releases; their writers differ, 0.47.3's
NSEC one is wrong), and what discovery needs is this small.

Bounds: a datagram is at most :data:`MAX_PACKET` bytes (the caller reads no more); each
question or record consumes bytes or fails, so the counts in the header cost nothing
more; a name is at most 255 bytes and follows at most :data:`MAX_POINTERS` compression
pointers, each strictly backwards (so no loop). Anything malformed raises
:class:`BadPacket`, which the caller counts as a drop.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_PACKET",
    "BadPacket",
    "Message",
    "Question",
    "Record",
    "decode",
    "encode_name",
    "message",
    "question",
]

MAX_PACKET = 9000  # RFC 6762 17: an mDNS message fits a 9000-byte jumbo frame
MAX_POINTERS = 16  # compression pointers followed in one name
MAX_NAME = 255  # RFC 1035 2.3.4
MAX_LABEL = 63

TYPE_A = 1
TYPE_PTR = 12
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_ANY = 255
CLASS_IN = 1
CLASS_QU = 0x8000  # RFC 6762 18.12: the question's top class bit, unicast response wanted

FLAG_RESPONSE = 0x8000  # QR
FLAG_AUTHORITATIVE = 0x0400  # AA (RFC 6762 18.4)
FLAG_TRUNCATED = 0x0200  # TC
MASK_OPCODE = 0x7800
MASK_RCODE = 0x000F

_KINDS = {TYPE_A: "A", TYPE_PTR: "PTR", TYPE_TXT: "TXT", TYPE_AAAA: "AAAA", TYPE_SRV: "SRV"}


class BadPacket(ValueError):
    """The datagram is not a DNS message this reader can take."""


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record of a response, as discovery reads it (names lowercase)."""

    name: str
    kind: str  # "PTR", "SRV", "TXT", "A" or "AAAA"
    target: str = ""  # PTR: the instance; SRV: the host name
    port: int = 0  # SRV
    address: str = ""  # A / AAAA


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # lowercase
    qtype: int
    unicast: bool  # the QU bit


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int
    questions: tuple[Question, ...]
    records: tuple[Record, ...]  # the answer and additional sections, in order


def decode(data: bytes) -> Message:
    """Read one datagram (BadPacket when malformed)."""
    if len(data) < 12:
        raise BadPacket(f"{len(data)} bytes, shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!6H", data)
    off = 12
    questions: list[Question] = []
    for _ in range(qdcount):
        name, off = _name(data, off)
        if off + 4 > len(data):
            raise BadPacket("question runs past the end")
        qtype, qclass = struct.unpack_from("!HH", data, off)
        off += 4
        questions.append(Question(name, qtype, bool(qclass & CLASS_QU)))
    records: list[Record] = []
    for i in range(ancount + nscount + arcount):
        name, off = _name(data, off)
        if off + 10 > len(data):
            raise BadPacket("record header runs past the end")
        rtype, _rclass, _ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        end = off + rdlen
        if end > len(data):
            raise BadPacket("record data runs past the end")
        rec = _rdata(data, off, end, name, rtype)
        if rec is not None and not ancount <= i < ancount + nscount:  # not authority
            records.append(rec)
        off = end
    return Message(ident, flags, tuple(questions), tuple(records))


def _rdata(data: bytes, off: int, end: int, name: str, rtype: int) -> Record | None:
    kind = _KINDS.get(rtype)
    size = end - off
    if kind == "A" or kind == "AAAA":
        if size != (4 if kind == "A" else 16):
            raise BadPacket(f"{kind} record of {size} bytes")
        ip = ipaddress.ip_address(data[off:end])
        return Record(name, kind, address=str(ip))
    if kind == "PTR":
        target, after = _name(data, off)
        if after != end:
            raise BadPacket("PTR name does not fill its record")
        return Record(name, kind, target=target)
    if kind == "SRV":
        if size < 7:
            raise BadPacket(f"SRV record of {size} bytes")
        (port,) = struct.unpack_from("!H", data, off + 4)
        target, after = _name(data, off + 6)
        if after != end:
            raise BadPacket("SRV name does not fill its record")
        return Record(name, kind, target=target, port=port)
    if kind == "TXT":
        return Record(name, kind)
    return None


def _name(data: bytes, off: int) -> tuple[str, int]:
    """The (lowercase, dotted, absolute) name at ``off`` and the offset after it."""
    labels: list[str] = []
    after = -1  # where the name ends in place (before the first pointer)
    size = 1
    jumps = 0
    while True:
        if off >= len(data):
            raise BadPacket("name runs past the end")
        n = data[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data):
                raise BadPacket("name pointer runs past the end")
            target = ((n & 0x3F) << 8) | data[off + 1]
            if after < 0:
                after = off + 2
            jumps += 1
            if target >= off or jumps > MAX_POINTERS:
                raise BadPacket("name pointer not strictly backwards")
            off = target
            continue
        if n & 0xC0:
            raise BadPacket(f"label type {n >> 6}")
        label = data[off + 1:off + 1 + n]
        if len(label) < n:
            raise BadPacket("label runs past the end")
        size += n + 1
        if size > MAX_NAME:
            raise BadPacket("name longer than 255 bytes")
        labels.append(label.decode("utf-8", "replace").lower())
        off += 1 + n
    return ".".join(labels) + ".", (after if after >= 0 else off)


def encode_name(name: str) -> bytes:
    """A dotted name in wire form, uncompressed (ValueError when it cannot be one)."""
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode()
        if not 0 < len(raw) <= MAX_LABEL:
            raise ValueError(f"{name!r}: a label must be 1 to {MAX_LABEL} bytes")
        out += bytes([len(raw)]) + raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"{name!r}: longer than {MAX_NAME} bytes")
    return bytes(out)


def question(name: str, qtype: int, *, unicast: bool = False) -> bytes:
    """One question in wire form."""
    return encode_name(name) + struct.pack("!HH", qtype, CLASS_IN | (CLASS_QU if unicast else 0))


def _record(name: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    # class IN without the cache-flush bit, as hashicorp/mdns writes every record
    return encode_name(name) + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


def ptr_record(name: str, ttl: int, target: str) -> bytes:
    return _record(name, TYPE_PTR, ttl, encode_name(target))


def srv_record(name: str, ttl: int, port: int, target: str, *, priority: int = 10,
               weight: int = 1) -> bytes:
    return _record(name, TYPE_SRV, ttl,
                   struct.pack("!HHH", priority, weight, port) + encode_name(target))


def txt_record(name: str, ttl: int, strings: list[str]) -> bytes:
    data = bytearray()
    for s in strings:
        raw = s.encode()
        if len(raw) > 255:
            raise ValueError(f"TXT string of {len(raw)} bytes (255 at most)")
        data += bytes([len(raw)]) + raw
    return _record(name, TYPE_TXT, ttl, bytes(data))


def address_record(name: str, ttl: int, address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    return _record(name, TYPE_A if ip.version == 4 else TYPE_AAAA, ttl, ip.packed)


def message(*, ident: int = 0, flags: int = 0, questions: list[bytes] | tuple[bytes, ...] = (),
            answers: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """A message from questions and answer records already in wire form."""
    header = struct.pack("!6H", ident, flags, len(questions), len(answers), 0, 0)
    return header + b"".join(questions) + b"".join(answers)
