"""Keyring: memberlist AES-GCM (versions 0 and 1), key rotation rules, the keyring file."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.wire.codec import DecodeError
from serfd.wire.framing import StreamReader, encode_stream
from serfd.wire.keyring import (
    DecryptError,
    Keyring,
    KeyringError,
    KeyringFileError,
    decode_key,
    encode_key,
    generate_key,
    read_keyring_file,
    write_keyring_file,
)
from serfd.wire.messages import Ping
from serfd.wire.packet import decode_packet, encode_packet

K16, K24, K32 = bytes(range(16)), bytes(range(24)), bytes(range(100, 132))
# Keys from RPC-TRACES.md (`serf keygen` output).
TRACE_K1 = "6hRTJPebtwdfvbZB72SW+nNMkVu1HVCgZLu9MmArzeg="
TRACE_K2 = "R99bBuHjO7k/AmuHAaRn0NXR88TAFD9Z/Zq7pm/kxXI="


@pytest.mark.parametrize("key", [K16, K24, K32])
@pytest.mark.parametrize("vsn", [0, 1])
@pytest.mark.parametrize("aad", [b"", b"\x0a\x00\x00\x00\x40"])
def test_round_trip_every_size_and_version(key: bytes, vsn: int, aad: bytes) -> None:
    kr = Keyring([key], version=vsn)
    for n in (0, 1, 15, 16, 17, 1400):
        msg = os.urandom(n)
        blob = kr.encrypt(msg, aad)
        assert blob[0] == vsn
        assert len(blob) == kr.encrypted_length(n)
        assert kr.decrypt(blob, aad) == msg


def test_version_1_layout_is_plain_aes_gcm() -> None:
    # [1][nonce][AES-GCM(plain, aad)] — what `serf agent -encrypt` sends and accepts.
    kr = Keyring([K32])
    blob = kr.encrypt(b"hello", b"aad")
    assert AESGCM(K32).decrypt(blob[1:13], blob[13:], b"aad") == b"hello"
    nonce = os.urandom(12)
    foreign = b"\x01" + nonce + AESGCM(K32).encrypt(nonce, b"from go", b"")
    assert kr.decrypt(foreign, b"") == b"from go"


def test_version_0_pads_pkcs7_always() -> None:
    kr = Keyring([K16], version=0)
    blob = kr.encrypt(b"x" * 16, b"")
    assert len(blob) == 1 + 12 + 32 + 16  # a whole block of padding
    inner = AESGCM(K16).decrypt(blob[1:13], blob[13:], None)
    assert inner == b"x" * 16 + bytes([16]) * 16
    # A version-1 keyring reads version-0 payloads (and the reverse).
    assert Keyring([K16]).decrypt(blob, b"") == b"x" * 16
    assert kr.decrypt(Keyring([K16]).encrypt(b"y", b""), b"") == b"y"


def test_bad_padding_is_refused_not_a_crash() -> None:
    nonce = os.urandom(12)
    bad = b"\x00" + nonce + AESGCM(K16).encrypt(nonce, b"a" * 15 + bytes([200]), None)
    with pytest.raises(DecodeError, match="padding"):
        Keyring([K16]).decrypt(bad, b"")


def test_encrypt_with_primary_decrypt_with_any() -> None:
    old = Keyring([K16])
    both = Keyring([K16, K32])
    assert both.primary_key == K16
    assert both.decrypt(Keyring([K32]).encrypt(b"new", b""), b"") == b"new"
    both.use_key(K32)
    assert both.keys == [K32, K16]
    with pytest.raises(DecodeError, match="No installed keys"):
        Keyring([K24]).decrypt(both.encrypt(b"m", b""), b"")
    assert old.decrypt(Keyring([K16]).encrypt(b"m", b""), b"") == b"m"


def test_wrong_aad_or_tampering_is_refused() -> None:
    kr = Keyring([K32])
    blob = bytearray(kr.encrypt(b"payload", b"hdr"))
    with pytest.raises(DecodeError):
        kr.decrypt(bytes(blob), b"other")
    blob[-1] ^= 1
    with pytest.raises(DecodeError):
        kr.decrypt(bytes(blob), b"hdr")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x02" + bytes(40), "Unsupported encryption version 2"),
        (b"\x01" + bytes(27), "too small"),
        (b"\x00" + bytes(43), "too small"),
    ],
)
def test_short_or_unknown_payloads(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        Keyring([K16]).decrypt(data, b"")


def test_decryption_failures_are_decrypt_errors_and_other_garbage_is_not() -> None:
    """The agent tells a key mismatch (refused with an error response) from garbage by
    the type: every way a payload fails to open is a DecryptError (a DecodeError)."""
    nonce = os.urandom(12)
    failures = [
        b"",
        b"\x02" + bytes(40),
        b"\x01" + bytes(27),
        Keyring([K32]).encrypt(b"m", b""),  # another key
        b"\x00" + nonce + AESGCM(K16).encrypt(nonce, b"a" * 15 + bytes([200]), None),
    ]
    for data in failures:
        with pytest.raises(DecryptError) as exc:
            Keyring([K16]).decrypt(data, b"")
        assert isinstance(exc.value, DecodeError)
    # Streams: encryption on one side only is a mismatch too; a bad frame is not.
    r = StreamReader()
    r.feed(encode_stream(Ping(seq_no=1, node="n").encode(), compress=False,
                         keyring=Keyring([K16])))
    with pytest.raises(DecryptError, match="encryption is not configured"):
        r.message()
    r = StreamReader(keyring=Keyring([K16]))
    r.feed(Ping(seq_no=1, node="n").encode())
    with pytest.raises(DecryptError, match="not encrypted"):
        r.message()
    r = StreamReader()
    r.feed(b"\xfe" + bytes(8))
    with pytest.raises(DecodeError) as exc2:
        r.message()
    assert not isinstance(exc2.value, DecryptError)


def test_key_operations_use_memberlist_errors() -> None:
    kr = Keyring([K16])
    with pytest.raises(KeyringError, match=r"^key size must be 16, 24 or 32 bytes$"):
        kr.add_key(b"short")
    kr.add_key(K24)
    kr.add_key(K24)  # no-op
    assert kr.keys == [K16, K24]
    with pytest.raises(KeyringError, match=r"^Requested key is not in the keyring$"):
        kr.use_key(K32)
    with pytest.raises(KeyringError, match=r"^Removing the primary key is not allowed$"):
        kr.remove_key(K16)
    kr.remove_key(K32)  # not installed: no-op, as memberlist
    kr.remove_key(K24)
    assert kr.keys == [K16]
    with pytest.raises(KeyringError, match="Empty primary key"):
        Keyring([])
    assert "key" not in repr(kr).lower().replace("keys", "").replace("keyring", "")


def test_base64_keys() -> None:
    assert len(decode_key(TRACE_K1)) == 32
    assert encode_key(decode_key(TRACE_K2)) == TRACE_K2
    assert len(decode_key(generate_key())) == 32
    assert generate_key() != generate_key()
    for bad in ("not base64!", "AAAA", TRACE_K1[:-1], "ü"):
        with pytest.raises(KeyringError):
            decode_key(bad)


def test_keyring_file_round_trip_mode_and_format(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keyring"
    write_keyring_file(path, [decode_key(TRACE_K1), decode_key(TRACE_K2)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Go's json.MarshalIndent(keys, "", "  "), no trailing newline.
    assert path.read_text() == f'[\n  "{TRACE_K1}",\n  "{TRACE_K2}"\n]'
    assert read_keyring_file(path) == [decode_key(TRACE_K1), decode_key(TRACE_K2)]
    # Replacing keeps 0600 even over a file that was world-readable, and leaves no temp.
    path.chmod(0o644)
    write_keyring_file(path, [decode_key(TRACE_K2)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keyring_file(path) == [decode_key(TRACE_K2)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring"]


def test_serf_written_keyring_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "kr.json"
    path.write_text(json.dumps([TRACE_K2, TRACE_K1]))  # compact, as hand-written files are
    assert read_keyring_file(path)[0] == base64.b64decode(TRACE_K2)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"[]", "contains no keys"),
        (b"", "Failed to decode"),
        (b"{}", "Failed to decode"),
        (b'["abc"]', "Failed to decode key"),
        (b'["AAAA"]', "key size"),
        (b"\xff\xfe", "Failed to decode"),
        (b"[1]", "Failed to decode"),
    ],
)
def test_bad_keyring_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "keyring"
    path.write_bytes(content)
    with pytest.raises(KeyringFileError, match=match) as e:
        read_keyring_file(path)
    assert str(path) in str(e.value)


def test_missing_keyring_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringFileError, match="Failed to read"):
        read_keyring_file(tmp_path / "absent")


# --- the keyring through the packet and stream seams


def test_packet_and_stream_with_real_keyring() -> None:
    kr = Keyring([K32, K16])
    ping = Ping(seq_no=7, node="n").encode()
    data = encode_packet([ping], compress=False, crc=True, keyring=kr)
    assert data[0] == 1
    assert decode_packet(data, keyring=Keyring([K16, K32])) == [ping]
    with pytest.raises(DecodeError):
        decode_packet(data, keyring=Keyring([K24]))
    wire = encode_stream(ping, compress=True, keyring=Keyring([K32], version=0))
    sr = StreamReader(max_size=1 << 20, keyring=kr)
    sr.feed(wire)
    assert sr.message() == ping


# --- fuzzing: garbage never escapes as anything but DecodeError / KeyringFileError


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decrypt(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Keyring([K16, K32]).decrypt(data, b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(min_value=0, max_value=200), st.integers(0, 7))
def test_fuzz_tampered_ciphertexts(msg: bytes, pos: int, bit: int) -> None:
    kr = Keyring([K24], version=pos % 2)
    blob = bytearray(kr.encrypt(msg, b""))
    blob[pos % len(blob)] ^= 1 << bit
    try:
        kr.decrypt(bytes(blob), b"")
    except DecodeError:
        return
    # Only flipping the version byte between 0 and 1 can still authenticate.
    assert pos % len(blob) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_encrypted_packets(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_packet(b"\x01" + data, keyring=Keyring([K16]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.text(max_size=50), st.integers(), st.none()), max_size=5).map(
        lambda v: json.dumps(v).encode()),
    st.lists(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), max_size=4).map(
        lambda v: json.dumps(v).encode()),
))
def test_fuzz_keyring_file(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("kr") / "keyring"
    path.write_bytes(content)
    try:
        keys = read_keyring_file(path)
    except KeyringFileError:
        return
    assert keys and all(len(k) in (16, 24, 32) for k in keys)
