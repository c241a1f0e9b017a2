"""Key management over Serf's internal queries: responder, tally, RPC body bytes."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.core.keymanager import (
    KeyResponder,
    KeyResult,
    decode_key_arg,
    decode_key_request,
    decode_key_response,
    encode_key_response,
    final_error,
    request_payload,
    response_fits_for,
    tally,
)
from serfd.wire.codec import DecodeError
from serfd.wire.keyring import Keyring, KeyringError, decode_key, encode_key

K1 = "6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="  # RPC-TRACES.md keys
K2 = "R99bBuHjO7k/AmuHAaRn0NXR88TAFD9Z/Zq7pm/kxXI="


def _resp(payload: bytes):  # type: ignore[no-untyped-def]
    assert payload[0] == 8
    return decode_key_response(payload[1:])


def test_request_payload_round_trip() -> None:
    p = request_payload(decode_key(K1))
    assert p[0] == 7
    assert msgpack.unpackb(p[1:], raw=True) == {b"Key": decode_key(K1)}
    assert decode_key_request(p) == decode_key(K1)
    assert decode_key_request(request_payload(b"")) == b""
    with pytest.raises(DecodeError):
        decode_key_request(b"\x08\x80")


def test_responder_rotation_and_errors() -> None:
    saved: list[list[bytes]] = []
    kr = Keyring([decode_key(K1)])
    r = KeyResponder(kr, persist=lambda keys: saved.append(keys) or None)
    assert _resp(r.answer("install-key", request_payload(decode_key(K2)))).result
    assert kr.keys == [decode_key(K1), decode_key(K2)] and saved[-1] == kr.keys
    lst = _resp(r.answer("list-keys", b""))
    assert lst.result and lst.keys == (K1, K2) and lst.primary_key == K1
    bad = _resp(r.answer("remove-key", request_payload(decode_key(K1))))
    assert not bad.result and bad.message == "Removing the primary key is not allowed"
    bad = _resp(r.answer("use-key", request_payload(b"x" * 16)))
    assert bad.message == "Requested key is not in the keyring"
    bad = _resp(r.answer("install-key", request_payload(b"short")))
    assert bad.message == "key size must be 16, 24 or 32 bytes"
    assert _resp(r.answer("use-key", request_payload(decode_key(K2)))).result
    assert _resp(r.answer("remove-key", request_payload(decode_key(K1)))).result
    assert kr.keys == [decode_key(K2)]
    assert r.answer("conflict", b"") is None
    assert not _resp(r.answer("install-key", b"garbage")).result


def test_persist_failure_is_reported() -> None:
    r = KeyResponder(Keyring([decode_key(K1)]), persist=lambda keys: "disk full")
    out = _resp(r.answer("install-key", request_payload(decode_key(K2))))
    assert not out.result and out.message == "disk full"


def test_no_keyring_messages() -> None:
    r = KeyResponder(None)
    assert _resp(r.answer("list-keys", b"")).message == "Keyring is empty (encryption not enabled)"
    for op in ("install-key", "use-key", "remove-key"):
        out = _resp(r.answer(op, request_payload(decode_key(K1))))
        assert out.message == "No keyring to modify (encryption not enabled)" and not out.result


def test_list_keys_is_truncated_to_fit_the_response_limit() -> None:
    keys = [bytes([i]) * 32 for i in range(60)]
    r = KeyResponder(Keyring(keys), response_fits=response_fits_for("node0", 1024))
    out = _resp(r.answer("list-keys", b""))
    assert out.result and 0 < len(out.keys) < 40
    assert out.message == f"truncated key list response, showing first {len(out.keys)} of 60 keys"
    assert list(out.keys) == [encode_key(k) for k in keys[: len(out.keys)]]


def test_tally_and_verdicts() -> None:
    res = KeyResult(num_nodes=4)
    ok = encode_key_response(True, "", [K1, K2], K1)
    tally(res, "a", ok)
    tally(res, "b", encode_key_response(False, "Removing the primary key is not allowed", None, ""))
    tally(res, "c", b"\x05junk")
    tally(res, "d", b"\x08\xc1")
    assert res.num_resp == 4 and res.num_err == 3
    assert res.keys == {K1: 1, K2: 1}
    assert res.messages["b"] == "Removing the primary key is not allowed"
    assert res.messages["c"].startswith("Invalid key query response type")
    assert res.messages["d"].startswith("Failed to decode key query response")
    assert final_error(res) == "3/4 nodes reported failure"
    partial = KeyResult(num_nodes=4, num_resp=3)
    assert final_error(partial) == "3/4 nodes reported success"
    assert final_error(KeyResult(num_nodes=2, num_resp=2)) == ""


def test_rpc_bodies_match_the_trace() -> None:
    # RPC-TRACES.md I2 (install-key) and I3 (list-keys), after the response header.
    i2 = bytes.fromhex("85a44b657973c0a84d657373616765738 0a64e756d45727200a84e756d4e6f646573"
                       "04a74e756d5265737004".replace(" ", ""))
    body = KeyResult(num_nodes=4, num_resp=4).rpc_body(with_keys=False)
    assert msgpack.packb(body, use_bin_type=True) == i2
    res = KeyResult(num_nodes=4)
    for node in "abcd":
        tally(res, node, encode_key_response(True, "", [K1], K1))
    i1 = msgpack.unpackb(bytes.fromhex(
        "85a44b65797381d92c36685254 4a5065627477646676625a42373253572b6e4e4d6b5675314856436"
        "7 5a4c75394d6d41727a65673d04a84d657373616765738 0a64e756d45727200a84e756d4e6f646573"
        "04a74e756d5265737004".replace(" ", "")))
    assert res.rpc_body(with_keys=True) == i1


def test_decode_key_arg_errors_like_go() -> None:
    assert decode_key_arg(K1) == decode_key(K1)
    with pytest.raises(KeyringError, match="illegal base64 data at input byte 3"):
        decode_key_arg("abc!")
    with pytest.raises(KeyringError, match="illegal base64 data at input byte"):
        decode_key_arg("abc")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_key_messages(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_key_response(data)
    res = KeyResult(num_nodes=1)
    tally(res, "x", data)  # never raises: garbage is a per-node failure
    assert res.num_resp == 1
    r = KeyResponder(Keyring([decode_key(K1)]))
    for op in ("install-key", "use-key", "remove-key", "list-keys"):
        out = r.answer(op, data)
        assert out is not None and out[0] == 8
    assert r.keyring is not None and decode_key(K1) in r.keyring.keys
