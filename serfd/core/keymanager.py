"""Serf's key management over internal queries: install-key, use-key, remove-key, list-keys.

Theory of operation
-------------------
Key rotation in Serf is a cluster-wide query (PROTOCOL.md section 3.8,
``serf/keymanager.go`` and ``serf/internal_query.go``):

* the **asker** (RPC ``install-key`` etc. on any node) sends the query
  ``_serf_<op>`` with payload ``[7][msgpack keyRequest{Key: raw key bytes}]`` and the
  default query parameters, then tallies the responses until every member
  (memberlist's NumMembers) answered or the query timed out:
  ``"%d/%d nodes reported failure"`` / ``"%d/%d nodes reported success"``;
* every **responder** (the asker too) applies the operation to its keyring, rewrites
  its keyring file, and answers ``[8][msgpack nodeKeyResponse{Result, Message, Keys,
  PrimaryKey}]``. ``list-keys`` answers the keys in base64, dropping keys from the end
  (with a "truncated key list" message) until the answer fits the response limit.

The responder half is :class:`KeyResponder` (pure: a keyring in, a payload out; the
file write is a callback the agent runs off the loop). The asker half is
:func:`tally` (responses in, Serf's RPC body and error out) plus
:func:`request_payload`; the agent drives the query between them.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serfd.wire.codec import DecodeError, pack_gossip, unpack_gossip
from serfd.wire.keyring import Keyring, KeyringError, encode_key
from serfd.wire.serf_messages import MessageQueryResponse, SerfMsgType

__all__ = [
    "KEY_QUERIES",
    "KeyResponder",
    "KeyResult",
    "decode_key_arg",
    "decode_key_response",
    "encode_key_response",
    "request_payload",
    "tally",
]

log = logging.getLogger("serfd.keymanager")

KEY_QUERIES = ("install-key", "use-key", "remove-key", "list-keys")  # after "_serf_"
MIN_ENCODED_KEY_LENGTH = 25  # internal_query.go minEncodedKeyLength

ERR_NO_KEYRING = "No keyring to modify (encryption not enabled)"
ERR_EMPTY_KEYRING = "Keyring is empty (encryption not enabled)"


# --------------------------------------------------------------------------- wire


def request_payload(raw_key: bytes) -> bytes:
    """``[7][keyRequest{Key}]`` (Key is a Go []byte: a raw string in the gossip dialect)."""
    return bytes((SerfMsgType.KEY_REQUEST,)) + pack_gossip({b"Key": raw_key or None})


def decode_key_request(payload: bytes) -> bytes:
    """The raw key of a ``[7]`` request payload; DecodeError for anything else."""
    if not payload or payload[0] != SerfMsgType.KEY_REQUEST:
        raise DecodeError("not a key request")
    obj = unpack_gossip(payload[1:])
    if not isinstance(obj, dict):
        raise DecodeError("key request is not a map")
    key = obj.get(b"Key", obj.get("Key"))
    if key is None:
        return b""
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogateescape")
    if not isinstance(key, bytes):
        raise DecodeError("key request Key is not bytes")
    return key


def encode_key_response(result: bool, message: str, keys: list[str] | None,
                        primary: str) -> bytes:
    """``[8][nodeKeyResponse]``, fields in Go's alphabetical order."""
    obj = {
        b"Keys": [k.encode() for k in keys] if keys else None,
        b"Message": message.encode("utf-8", "surrogateescape"),
        b"PrimaryKey": primary.encode(),
        b"Result": result,
    }
    return bytes((SerfMsgType.KEY_RESPONSE,)) + pack_gossip(obj)


@dataclass(frozen=True, slots=True)
class NodeKeyResponse:
    result: bool
    message: str
    keys: tuple[str, ...]
    primary_key: str


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, str):
        return v
    raise DecodeError(f"expected a string, got {type(v).__name__}")


def decode_key_response(body: bytes) -> NodeKeyResponse:
    """A nodeKeyResponse (after the ``[8]``); DecodeError for garbage."""
    obj = unpack_gossip(body)
    if not isinstance(obj, dict):
        raise DecodeError("key response is not a map")
    get = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): v
           for k, v in obj.items()}
    result = get.get("Result", False)
    if not isinstance(result, bool):
        raise DecodeError("Result is not a bool")
    keys = get.get("Keys") or []
    if not isinstance(keys, list):
        raise DecodeError("Keys is not a list")
    return NodeKeyResponse(result, _text(get.get("Message")), tuple(_text(k) for k in keys),
                           _text(get.get("PrimaryKey")))


def decode_key_arg(text: str) -> bytes:
    """Base64 of the RPC ``Key`` argument; KeyringError with Go's message when invalid."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        pass
    alphabet = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    raw = text.encode("utf-8", "surrogateescape")
    pos = next((i for i, c in enumerate(raw) if c not in alphabet and c != ord("=")), None)
    if pos is None:
        pos = raw.find(b"=") if b"=" in raw else len(raw) - len(raw) % 4
    raise KeyringError(f"illegal base64 data at input byte {pos}")


# --------------------------------------------------------------------------- responder


class KeyResponder:
    """Answers ``_serf_*-key`` queries from this node's keyring.

    ``persist(keys)`` saves the keyring after a change and returns an error text or
    None; it is called with the new key list *before* the answer is built, so the
    answer reports a failed write as Serf does. ``response_fits(payload)`` says whether
    a query response with this payload fits the response size limit.
    """

    def __init__(self, keyring: Keyring | None, *,
                 persist: Callable[[list[bytes]], str | None] | None = None,
                 response_fits: Callable[[bytes], bool] = lambda p: True) -> None:
        self.keyring = keyring
        self.persist = persist
        self.response_fits = response_fits

    def answer(self, op: str, payload: bytes) -> bytes | None:
        """The ``[8]`` answer for ``_serf_<op>`` (None: not a key query, or no answer)."""
        if op == "list-keys":
            return self._list()
        if op not in KEY_QUERIES:
            return None
        try:
            key = decode_key_request(payload)
        except DecodeError as e:
            log.error("failed to decode key request: %s", e)
            return encode_key_response(False, "", None, "")
        if self.keyring is None:
            log.error(ERR_NO_KEYRING)
            return encode_key_response(False, ERR_NO_KEYRING, None, "")
        log.info("received %s query", op)
        try:
            if op == "install-key":
                self.keyring.add_key(key)
            elif op == "use-key":
                self.keyring.use_key(key)
            else:
                self.keyring.remove_key(key)
        except KeyringError as e:
            log.error("failed to %s: %s", op.replace("-", " "), e)
            return encode_key_response(False, str(e), None, "")
        if self.persist is not None:
            err = self.persist(self.keyring.keys)
            if err:
                log.error("failed to write keyring file: %s", err)
                return encode_key_response(False, err, None, "")
        return encode_key_response(True, "", None, "")

    def _list(self) -> bytes:
        if self.keyring is None:
            log.error(ERR_EMPTY_KEYRING)
            return encode_key_response(False, ERR_EMPTY_KEYRING, None, "")
        log.info("received list-keys query")
        keys = [encode_key(k) for k in self.keyring.keys]
        primary = encode_key(self.keyring.primary_key)
        actual = len(keys)
        shown, message = keys, ""
        # internal_query.go keyListResponseWithCorrectSize: drop keys until it fits.
        for i in range(1024 // MIN_ENCODED_KEY_LENGTH, -1, -1):
            payload = encode_key_response(True, message, shown, primary)
            if self.response_fits(payload):
                if message:
                    log.warning("%s", message)
                return payload
            shown = keys[:i]
            message = f"truncated key list response, showing first {len(shown)} of {actual} keys"
        return encode_key_response(False, "Failed to truncate response so that it fits into "
                                   "message", None, "")


def response_fits_for(node_name: str, limit: int) -> Callable[[bytes], bool]:
    """Whether ``[5]`` queryResponse{payload} from ``node_name`` is within ``limit``."""
    def fits(payload: bytes) -> bool:
        raw = MessageQueryResponse(ltime=2**63, id=2**31, from_=node_name, flags=0,
                                   payload=payload).encode()
        return len(raw) <= limit
    return fits


# --------------------------------------------------------------------------- asker


@dataclass(slots=True)
class KeyResult:
    """Serf's KeyResponse, as the RPC reports it."""

    messages: dict[str, str] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    primary_keys: dict[str, int] = field(default_factory=dict)
    num_nodes: int = 0
    num_resp: int = 0
    num_err: int = 0

    def rpc_body(self, with_keys: bool) -> dict[str, Any]:
        """The RPC keyResponse body (keys in Go's alphabetical order)."""
        return {
            "Keys": dict(self.keys) if with_keys else None,
            "Messages": dict(self.messages),
            "NumErr": self.num_err,
            "NumNodes": self.num_nodes,
            "NumResp": self.num_resp,
        }


def tally(result: KeyResult, from_: str, payload: bytes) -> None:
    """Count one node's answer into ``result`` (keymanager.go streamKeyResp)."""
    result.num_resp += 1
    if not payload or payload[0] != SerfMsgType.KEY_RESPONSE:
        result.messages[from_] = f"Invalid key query response type: {list(payload)}"
        result.num_err += 1
        return
    try:
        r = decode_key_response(payload[1:])
    except DecodeError:
        result.messages[from_] = f"Failed to decode key query response: {list(payload)}"
        result.num_err += 1
        return
    if not r.result:
        result.messages[from_] = r.message
        result.num_err += 1
    elif r.message:
        result.messages[from_] = r.message
        log.warning("%s", r.message)
    for k in r.keys:
        result.keys[k] = result.keys.get(k, 0) + 1
    result.primary_keys[r.primary_key] = result.primary_keys.get(r.primary_key, 0) + 1


def final_error(result: KeyResult) -> str:
    """Serf's verdict: "" when every member answered and none failed."""
    if result.num_err:
        return f"{result.num_err}/{result.num_nodes} nodes reported failure"
    if result.num_resp != result.num_nodes:
        return f"{result.num_resp}/{result.num_nodes} nodes reported success"
    return ""
