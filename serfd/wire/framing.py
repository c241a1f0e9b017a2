"""TCP stream framing of memberlist 0.2.2: push/pull, stream ping/ack, errors, user messages.

Theory of operation
-------------------
A memberlist TCP connection carries one exchange: the opener writes one
message, the other side may answer with one (PROTOCOL.md section 2.5). A
*plain* stream message is a type byte followed by msgpack values, with no
length prefix, so where it ends follows from its content:

* ``[0]`` ping, ``[2]`` ack, ``[13]`` err: one msgpack struct;
* ``[6]`` push/pull: ``pushPullHeader{Nodes, UserStateLen, Join}``, then
  ``Nodes`` ``pushNodeState`` structs, then ``UserStateLen`` raw bytes (the
  Serf delegate state);
* ``[8]`` user message: ``userMsgHeader{UserMsgLen}`` then that many raw bytes.

Two wrappers may surround it (memberlist ``rawSendMsgStream``): compression
``[9][msgpack compress{Algo, Buf}]``, written whenever compression is on (no
size check, unlike UDP), and then encryption ``[10][len u32 BE][blob]`` where the
blob is ``keyring.encrypt(inner, aad=those 5 header bytes)``. Inside encryption
there may be compression; nothing nests deeper.

``StreamReader`` is fed bytes as they arrive and hands out the plain message
once it is complete. For a plain stream it follows the msgpack values with a
streaming ``msgpack.Unpacker``, so each byte is examined about once however the
data is chunked. A message larger than ``max_size`` (memberlist's 20 MiB
``maxPushStateBytes``), an encrypted length over it, or a Nodes/UserStateLen
count that could not fit in it is refused without allocating anything for it.
Everything the peer can get wrong surfaces as :class:`~serfd.wire.codec.DecodeError`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from serfd.wire.codec import DecodeError, obj_to_struct
from serfd.wire.keyring import DecryptError
from serfd.wire.messages import MsgType, PushNodeState, PushPullHeader, UserMsgHeader
from serfd.wire.packet import Keyring, compress_message, decompress_message

__all__ = [
    "ENCRYPT_HEADER_SIZE",
    "ENCRYPT_OVERHEAD_V1",
    "MAX_STREAM_SIZE",
    "STREAM_MESSAGE_TYPES",
    "StreamReader",
    "decode_push_pull",
    "decode_user_stream",
    "encode_push_pull",
    "encode_push_pull_bodies",
    "encode_stream",
    "encode_user_stream",
]

MAX_STREAM_SIZE = 20 * 1024 * 1024  # memberlist net.go maxPushStateBytes
ENCRYPT_HEADER_SIZE = 5  # [10] + u32 length
# security.go encryptOverhead for version 1 (what Serf uses): vsn byte + 12-byte
# GCM nonce + 16-byte tag. Version 0 adds 1-16 bytes of PKCS#7 padding on top.
ENCRYPT_OVERHEAD_V1 = 29

# What may sit inside the wrappers (memberlist handleConn and the push/pull reply).
STREAM_MESSAGE_TYPES = frozenset(
    {MsgType.PING, MsgType.ACK, MsgType.PUSH_PULL, MsgType.USER, MsgType.ERR}
)

_U32 = struct.Struct(">I")


# --------------------------------------------------------------------------- writing


def encode_stream(plain: bytes, *, compress: bool, keyring: Keyring | None = None) -> bytes:
    """Wrap one plain stream message like memberlist's rawSendMsgStream: compress, then encrypt.

    The encrypted length goes into the AAD, so it must be known before encrypting:
    it comes from ``keyring.encrypted_length(n)`` if the keyring has that method,
    else the version 1 layout (``n + 29``) is assumed.
    """
    if not plain:
        # memberlist's readStream indexes the (decompressed/decrypted) message unchecked.
        raise ValueError("empty stream message")
    buf = compress_message(plain) if compress else plain
    if keyring is None:
        return buf
    sizer = getattr(keyring, "encrypted_length", None)
    length = int(sizer(len(buf))) if callable(sizer) else len(buf) + ENCRYPT_OVERHEAD_V1
    header = bytes((MsgType.ENCRYPT,)) + _U32.pack(length)
    blob = keyring.encrypt(buf, header)
    if len(blob) != length:
        raise ValueError(f"keyring produced {len(blob)} bytes, announced {length}")
    return header + blob


def encode_push_pull(join: bool, nodes: list[PushNodeState], user_state: bytes) -> bytes:
    """Plain push/pull: ``[6]`` header, node states, then the raw user (Serf) state."""
    return encode_push_pull_bodies(join, [n.body() for n in nodes], user_state)


def encode_push_pull_bodies(join: bool, bodies: list[bytes], user_state: bytes) -> bytes:
    """:func:`encode_push_pull` with each node state given already encoded (its
    ``PushNodeState.body()``): a node keeps them and re-encodes only what changed."""
    head = PushPullHeader(nodes=len(bodies), user_state_len=len(user_state), join=join).encode()
    return b"".join((head, *bodies, user_state))


def encode_user_stream(data: bytes) -> bytes:
    """A user message in its TCP form: ``[8][userMsgHeader{UserMsgLen}][data]``."""
    return UserMsgHeader(user_msg_len=len(data)).encode() + data


# --------------------------------------------------------------------------- reading


def _unpacker(max_size: int) -> Any:
    return msgpack.Unpacker(
        raw=True, strict_map_key=False, use_list=True, max_buffer_size=max_size + 64
    )


def _count(obj: dict[str, Any], attr: str, go: str, max_size: int) -> int:
    n = int(obj[attr])
    if n < 0:
        raise DecodeError(f"negative {go} {n}")
    if n > max_size:
        raise DecodeError(f"{go} {n} cannot fit in {max_size} bytes")
    return n


class _Framer:
    """Finds where one plain stream message ends, fed the bytes after its type byte."""

    __slots__ = (
        "_end",
        "_max_size",
        "_nodes_left",
        "_raw_len",
        "_raw_start",
        "_stage",
        "_total",
        "_type",
        "_u",
    )

    def __init__(self, msg_type: int, max_size: int) -> None:
        if msg_type not in STREAM_MESSAGE_TYPES and msg_type != MsgType.COMPRESS:
            raise DecodeError(f"invalid stream message type {msg_type}")
        self._type = msg_type
        self._max_size = max_size
        self._u = _unpacker(max_size)
        self._stage = "head"  # head -> nodes -> raw -> done
        self._nodes_left = 0
        self._raw_len = 0
        self._raw_start = 0
        self._total = 0  # bytes fed so far
        self._end: int | None = None

    def feed(self, data: bytes) -> int | None:
        """Add bytes; return the message length (after the type byte) once complete."""
        if self._end is not None:
            return self._end
        self._total += len(data)
        if self._stage != "raw":
            try:
                self._u.feed(data)
            except msgpack.BufferFull:
                raise DecodeError("stream message too large") from None
        try:
            return self._advance()
        except msgpack.OutOfData:
            return None
        except DecodeError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
            raise DecodeError(f"bad msgpack in stream: {e.__class__.__name__}") from None

    def _advance(self) -> int | None:
        u = self._u
        if self._stage == "head":
            obj = u.unpack()
            if self._type == MsgType.PUSH_PULL:
                head = obj_to_struct(PushPullHeader.SCHEMA, obj)
                self._nodes_left = _count(head, "nodes", "Nodes", self._max_size)
                self._raw_len = _count(head, "user_state_len", "UserStateLen", self._max_size)
                self._stage = "nodes"
            elif self._type == MsgType.USER:
                head = obj_to_struct(UserMsgHeader.SCHEMA, obj)
                self._raw_len = _count(head, "user_msg_len", "UserMsgLen", self._max_size)
                self._stage = "nodes"
            else:
                self._end = u.tell()
                return self._end
        while self._stage == "nodes" and self._nodes_left > 0:
            u.skip()  # validated later by decode_push_pull
            self._nodes_left -= 1
        if self._stage == "nodes":
            self._stage = "raw"
            self._raw_start = u.tell()
            self._u = None  # the rest is raw bytes: stop copying them into the unpacker
        end = self._raw_start + self._raw_len
        if end > self._max_size:
            raise DecodeError(f"stream message of {end} bytes exceeds {self._max_size}")
        if self._total >= end:
            self._end = end
        return self._end


def _frame_whole(plain: bytes, max_size: int) -> bytes:
    """Check that ``plain`` starts with one complete stream message; return exactly that."""
    if not plain:
        raise DecodeError("empty stream message")
    if plain[0] not in STREAM_MESSAGE_TYPES:
        raise DecodeError(f"invalid stream message type {plain[0]}")
    end = _Framer(plain[0], max_size).feed(plain[1:])
    if end is None:
        raise DecodeError("truncated stream message")
    return plain[: 1 + end]


class StreamReader:
    """Incremental reader of one TCP stream: ``feed()`` bytes, then poll ``message()``.

    ``keyring`` decrypts ``[10]`` messages. With a keyring and ``verify_incoming``
    a plain stream is refused ("Encryption is configured but remote state is not
    encrypted"); without a keyring an encrypted one is. ``feed`` and ``message``
    raise ``DecodeError`` once the pending message exceeds ``max_size``.
    """

    __slots__ = ("_buf", "_fed", "_framer", "_keyring", "_max_size", "_verify_incoming")

    def __init__(
        self,
        max_size: int = MAX_STREAM_SIZE,
        *,
        keyring: Keyring | None = None,
        verify_incoming: bool = True,
    ) -> None:
        self._max_size = max_size
        self._keyring = keyring
        self._verify_incoming = verify_incoming
        self._buf = bytearray()
        self._framer: _Framer | None = None
        self._fed = 0  # how much of _buf the framer has seen

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append bytes read from the connection."""
        self._buf += data
        if len(self._buf) > self._max_size + ENCRYPT_HEADER_SIZE:
            raise DecodeError(f"stream message exceeds {self._max_size} bytes")

    def message(self) -> bytes | None:
        """The next complete plain message (wrappers removed), or None while incomplete."""
        buf = self._buf
        if not buf:
            return None
        t = buf[0]
        if t == MsgType.ENCRYPT:
            return self._encrypted()
        if self._keyring is not None and self._verify_incoming:
            raise DecryptError("Encryption is configured but remote state is not encrypted")
        if self._framer is None:
            self._framer = _Framer(t, self._max_size)
            self._fed = 1
        end = self._framer.feed(bytes(buf[self._fed :]))
        self._fed = len(buf)
        if end is None:
            return None
        msg = bytes(buf[: 1 + end])
        del buf[: 1 + end]
        self._framer = None
        self._fed = 0
        if t == MsgType.COMPRESS:
            return self._decompress(msg)
        return msg

    def _encrypted(self) -> bytes | None:
        buf = self._buf
        if self._keyring is None:
            raise DecryptError("Remote state is encrypted and encryption is not configured")
        if len(buf) < ENCRYPT_HEADER_SIZE:
            return None
        (length,) = _U32.unpack_from(buf, 1)
        if length > self._max_size:
            raise DecodeError(f"Remote node state is larger than limit ({length})")
        total = ENCRYPT_HEADER_SIZE + length
        if len(buf) < total:
            return None
        header = bytes(buf[:ENCRYPT_HEADER_SIZE])
        blob = bytes(buf[ENCRYPT_HEADER_SIZE:total])
        del buf[:total]
        plain = self._keyring.decrypt(blob, header)
        if not plain:
            raise DecodeError("empty decrypted stream message")
        if plain[0] == MsgType.COMPRESS:
            return self._decompress(plain)
        return _frame_whole(plain, self._max_size)

    def _decompress(self, msg: bytes) -> bytes:
        # msg is [9][compress struct]; Go reads exactly one struct, so we do too.
        end = _Framer(MsgType.COMPRESS, self._max_size).feed(msg[1:])
        if end is None:
            raise DecodeError("truncated compress message")
        inner = decompress_message(msg[1 : 1 + end], max_size=self._max_size)
        return _frame_whole(inner, self._max_size)


def decode_push_pull(plain: bytes) -> tuple[PushPullHeader, list[PushNodeState], bytes]:
    """Split a plain ``[6]`` push/pull into its header, node states and raw user state."""
    if not plain or plain[0] != MsgType.PUSH_PULL:
        raise DecodeError("not a push/pull message")
    u = _unpacker(len(plain))
    u.feed(plain[1:])
    try:
        head = obj_to_struct(PushPullHeader.SCHEMA, u.unpack())
        n_nodes = _count(head, "nodes", "Nodes", len(plain))
        n_user = _count(head, "user_state_len", "UserStateLen", len(plain))
        nodes = [
            PushNodeState(**obj_to_struct(PushNodeState.SCHEMA, u.unpack())) for _ in range(n_nodes)
        ]
        start = 1 + u.tell()
    except msgpack.OutOfData:
        raise DecodeError("truncated push/pull") from None
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        raise DecodeError(f"bad msgpack in push/pull: {e.__class__.__name__}") from None
    user = plain[start : start + n_user]
    if len(user) != n_user:
        raise DecodeError(f"Failed to read full user state ({len(user)} / {n_user})")
    return PushPullHeader(**head), nodes, user


def decode_user_stream(plain: bytes) -> bytes:
    """The payload of a TCP user message ``[8][userMsgHeader][data]``."""
    if not plain or plain[0] != MsgType.USER:
        raise DecodeError("not a user message")
    u = _unpacker(len(plain))
    u.feed(plain[1:])
    try:
        head = obj_to_struct(UserMsgHeader.SCHEMA, u.unpack())
        start = 1 + u.tell()
    except msgpack.OutOfData:
        raise DecodeError("truncated user message") from None
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        raise DecodeError(f"bad msgpack in user message: {e.__class__.__name__}") from None
    n = _count(head, "user_msg_len", "UserMsgLen", len(plain))
    data = plain[start : start + n]
    if len(data) != n:
        raise DecodeError(f"Failed to read full user message ({len(data)} / {n})")
    return data
