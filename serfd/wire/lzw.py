"""LZW exactly as Go's ``compress/lzw`` writes and reads it (LSB order, literal width 8).

Theory of operation
-------------------
memberlist compresses packets and streams with ``lzw.NewWriter(w, lzw.LSB, 8)``
(PROTOCOL.md section 2.3). Go's variant is the GIF flavour:

* codes 0-255 are literal bytes, 256 is *clear*, 257 is *end of data*, and the
  dictionary grows from 258;
* codes start 9 bits wide and are packed least-significant bit first; the width
  grows by one each time the next code to assign reaches ``2**width``, up to 12;
* the encoder (Go >= 1.17, which the Debian 0.9.4 build uses) writes a clear code
  first. When the next code to assign would be 4095 it writes another clear code
  and starts over with an empty dictionary at width 9. At the end it writes the
  pending code, bumps the counter (which may trigger that clear), writes end of
  data and pads the last byte with zero bits;
* the decoder accepts streams with or without the leading clear, must see end of
  data (a stream that just stops is rejected), and stops adding entries once the
  width is 12 and the table is full, until a clear comes.

``compress`` is byte-identical to Go's writer. ``decompress`` mirrors Go's reader
and raises :class:`~serfd.wire.codec.DecodeError` for anything Go would reject, and
also when the output would exceed ``max_size`` (an LZW "bomb" can expand a
64 KiB datagram a thousandfold, so every caller chooses a cap).

Two implementations, one behaviour: ``_lzw.c`` (built by setup.py where a C compiler
is present, as in the .deb) and the pure-Python ``compress_py``/``decompress_py`` here,
used when the C module is absent or ``SERFD_PURE_LZW=1`` is set. Python spends about a
tenth of a microsecond per byte each way, and every gossip datagram is compressed once
and decompressed by each receiver: in a burst of joins that was most of the CPU an agent
used. ``IMPLEMENTATION`` says which one runs; tests hold both to the same bytes.
"""

from __future__ import annotations

import os
from types import ModuleType

from serfd.wire.codec import DecodeError

__all__ = ["DEFAULT_MAX_SIZE", "IMPLEMENTATION", "compress", "decompress"]

_LIT_WIDTH = 8  # memberlist lzwLitWidth
_CLEAR = 1 << _LIT_WIDTH  # 256
_EOF = _CLEAR + 1  # 257
_MAX_WIDTH = 12  # compress/lzw maxWidth
_MAX_CODE = (1 << _MAX_WIDTH) - 1  # 4095: the encoder clears when it would assign this

# Same ceiling as memberlist's maxPushStateBytes (20 MiB), the largest thing a
# peer may legitimately send us.
DEFAULT_MAX_SIZE = 20 * 1024 * 1024


def compress_py(data: bytes) -> bytes:
    """Compress ``data`` byte-for-byte as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` would."""
    out = bytearray()
    # Bit accumulator: the clear code goes first, 9 bits wide.
    acc = _CLEAR
    nbits = _LIT_WIDTH + 1
    width = _LIT_WIDTH + 1
    hi = _EOF  # the highest code assigned so far (the next one is hi + 1)
    overflow = 1 << width

    if data:
        table: dict[int, int] = {}
        get = table.get
        view = memoryview(data)
        code = view[0]
        for byte in view[1:]:
            key = (code << 8) | byte
            found = get(key)
            if found is not None:
                code = found
                continue
            acc |= code << nbits
            nbits += width
            while nbits >= 8:
                out.append(acc & 0xFF)
                acc >>= 8
                nbits -= 8
            code = byte
            hi += 1
            if hi == overflow:
                width += 1
                overflow <<= 1
            if hi == _MAX_CODE:
                acc |= _CLEAR << nbits
                nbits += width
                width = _LIT_WIDTH + 1
                hi = _EOF
                overflow = 1 << width
                table.clear()
                continue
            table[key] = hi
        # Close(): the pending code, then the counter bump that may force a clear.
        acc |= code << nbits
        nbits += width
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == _MAX_CODE:
            acc |= _CLEAR << nbits
            nbits += width
            width = _LIT_WIDTH + 1

    acc |= _EOF << nbits
    nbits += width
    while nbits > 0:
        out.append(acc & 0xFF)
        acc >>= 8
        nbits -= 8
    return bytes(out)


def decompress_py(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Decompress a Go LZW stream; ``DecodeError`` if malformed, unterminated or over max_size."""
    out = bytearray()
    # table[c] is the expansion of code c; 256 and 257 are never looked up. Entries
    # left over from before a clear are never read: valid codes are <= hi and every
    # code in 258..hi has been rewritten since the clear.
    table: list[bytes] = [bytes((i,)) for i in range(_CLEAR)] + [b""] * (_MAX_CODE + 1 - _CLEAR)
    width = _LIT_WIDTH + 1
    mask = (1 << width) - 1
    hi = _EOF
    overflow = 1 << width
    last: bytes | None = None  # previous expansion, None right after a clear
    acc = 0
    nbits = 0
    for byte in data:
        acc |= byte << nbits
        nbits += 8
        while nbits >= width:
            code = acc & mask
            acc >>= width
            nbits -= width
            if code < _CLEAR:
                entry = table[code]
            elif code == _CLEAR:
                width = _LIT_WIDTH + 1
                mask = (1 << width) - 1
                hi = _EOF
                overflow = 1 << width
                last = None
                continue
            elif code == _EOF:
                return bytes(out)
            elif code < hi or (code == hi and last is None):
                entry = table[code]
            elif code == hi:
                # The code being defined right now: previous expansion plus its own first byte.
                assert last is not None
                entry = last + last[:1]
            else:
                raise DecodeError(f"lzw: invalid code {code}")
            if last is not None:
                table[hi] = last + entry[:1]
            out += entry
            if len(out) > max_size:
                raise DecodeError(f"lzw: output exceeds {max_size} bytes")
            last = entry
            hi += 1
            if hi >= overflow:
                if width == _MAX_WIDTH:
                    # Table full: no more entries until the next clear.
                    last = None
                    hi -= 1
                else:
                    width += 1
                    mask = (1 << width) - 1
                    overflow <<= 1
    raise DecodeError("lzw: stream ended without an end-of-data code")


def _load_c() -> ModuleType | None:
    if os.environ.get("SERFD_PURE_LZW", "") not in ("", "0"):
        return None
    try:
        from serfd.wire import _lzw  # built by setup.py (types: _lzw.pyi)
    except ImportError:
        return None
    return _lzw


_C = _load_c()
IMPLEMENTATION = "c" if _C is not None else "python"


def compress_c(data: bytes) -> bytes:
    """:func:`compress_py` in C (``_lzw.c``); only when ``IMPLEMENTATION == "c"``."""
    assert _C is not None
    out: bytes = _C.compress(data)
    return out


def decompress_c(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """:func:`decompress_py` in C (``_lzw.c``); only when ``IMPLEMENTATION == "c"``."""
    assert _C is not None
    try:
        out: bytes = _C.decompress(data, max_size)
    except ValueError as e:
        raise DecodeError(str(e)) from None
    return out


if _C is not None:
    compress = compress_c
    decompress = decompress_c
else:
    compress = compress_py
    decompress = decompress_py
