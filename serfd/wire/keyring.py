"""memberlist's keyring: AES-GCM gossip encryption with a primary key and secondary keys.

Theory of operation
-------------------
A :class:`Keyring` holds 1..n raw AES keys (16, 24 or 32 bytes: AES-128/192/256),
the first being the *primary*. Everything we send is encrypted with the primary;
what we receive is tried against every key, primary first (memberlist 0.2.2
``security.go``/``keyring.go``, PROTOCOL.md section 2.4). Rotation is therefore
install (everyone can read the new key), use (everyone writes with it), remove
(the old key is gone), and at every step a mixed cluster keeps talking.

Encrypted payload layout::

    [vsn u8][nonce 12 bytes][AES-GCM ciphertext || tag 16 bytes]

* version 0 pads the plaintext with PKCS#7 to a 16-byte multiple (1..16 pad bytes)
  before sealing; the receiver strips it;
* version 1 seals the plaintext as is. Serf runs memberlist protocol 2, so Serf
  always sends version 1; both are accepted.

The AAD is empty on UDP and the 5-byte ``[10][len u32]`` header on TCP streams; the
caller passes it (``serfd.wire.packet``/``serfd.wire.framing`` are the users of this seam).

Misuse raises :class:`KeyringError` with memberlist's own message; a payload no
key opens raises :class:`~serfd.wire.codec.DecodeError` (the peer's problem, counted and
dropped by the caller, never a crash).

The keyring *file* is Serf's ``keyring_file``: a JSON array of standard base64
keys, primary first, rewritten (2-space indent, mode 0600) after each change. We
write it atomically (temporary file, fsync, rename, fsync of the directory) so a
crash mid-rotation leaves the old or the new keyring, never a torn one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from serfd.base.atomicfile import replace_file
from serfd.wire.codec import DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag

__all__ = [
    "KEY_SIZES",
    "DecryptError",
    "Keyring",
    "KeyringError",
    "KeyringFileError",
    "decode_key",
    "encode_key",
    "generate_key",
    "keyring_from_config",
    "keyring_path",
    "read_keyring_file",
    "write_keyring_file",
]

KEY_SIZES = (16, 24, 32)  # AES-128, AES-192, AES-256
VERSION_SIZE = 1
NONCE_SIZE = 12  # GCM standard nonce
TAG_SIZE = 16  # GCM tag
BLOCK_SIZE = 16  # AES block, the PKCS#7 unit of version 0
MAX_VERSION = 1  # memberlist maxEncryptionVersion

# memberlist's error texts (keyring.go), which Serf passes on to RPC clients.
ERR_KEY_SIZE = "key size must be 16, 24 or 32 bytes"
ERR_NOT_IN_KEYRING = "Requested key is not in the keyring"
ERR_REMOVE_PRIMARY = "Removing the primary key is not allowed"
ERR_EMPTY_PRIMARY = "Empty primary key not allowed"


class DecryptError(DecodeError):
    """Encrypted gossip we cannot open, or a peer whose encryption does not match ours.

    Most likely a node with another key (or none); the message is memberlist's text,
    which the agent logs and sends back in a stream's error response."""


class KeyringError(ValueError):
    """A key operation memberlist refuses (the message is memberlist's own)."""


class KeyringFileError(ValueError):
    """The keyring file cannot be used (message names the file and the reason)."""


def encrypted_length(vsn: int, n: int) -> int:
    """Bytes an ``n``-byte plaintext takes once encrypted with version ``vsn``."""
    if vsn >= 1:
        return VERSION_SIZE + NONCE_SIZE + n + TAG_SIZE
    return VERSION_SIZE + NONCE_SIZE + n + (BLOCK_SIZE - n % BLOCK_SIZE) + TAG_SIZE


def encrypt_overhead(vsn: int) -> int:
    """memberlist encryptOverhead: the size budget reserved for encryption."""
    return 29 if vsn >= 1 else 45  # vsn 0 reserves a whole pad block


def validate_key(key: bytes) -> None:
    if len(key) not in KEY_SIZES:
        raise KeyringError(ERR_KEY_SIZE)


def encode_key(key: bytes) -> str:
    """Standard padded base64, as Serf prints keys."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """A base64 key as Serf accepts it (std alphabet, padded), size-checked."""
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise KeyringError(f"illegal base64 data: {e}") from None
    validate_key(key)
    return key


def generate_key() -> str:
    """A new random 32-byte key in base64 (``serf keygen``)."""
    return encode_key(os.urandom(32))  # what secrets.token_bytes reads


class Keyring:
    """An ordered set of AES keys, primary first; encrypts and decrypts gossip payloads."""

    __slots__ = ("_ciphers", "_keys", "version")

    def __init__(self, keys: Iterable[bytes], primary: bytes | None = None, *,
                 version: int = 1) -> None:
        keys = list(keys)
        if primary is None:
            if not keys:
                raise KeyringError(ERR_EMPTY_PRIMARY)
            primary = keys[0]
        if not primary:
            raise KeyringError(ERR_EMPTY_PRIMARY)
        if version not in (0, 1):
            raise ValueError(f"unsupported encryption version {version}")
        self.version = version
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        self.add_key(primary)
        for k in keys:
            self.add_key(k)

    # -- the key list (memberlist keyring.go semantics)

    @property
    def keys(self) -> list[bytes]:
        """Every key, primary first."""
        return list(self._keys)

    @property
    def primary_key(self) -> bytes:
        return self._keys[0]

    def add_key(self, key: bytes) -> None:
        """Install a key for decryption (a key already there is a no-op)."""
        key = bytes(key)
        validate_key(key)
        if key not in self._keys:
            self._keys.append(key)

    def use_key(self, key: bytes) -> None:
        """Make an installed key the primary (the one we encrypt with)."""
        key = bytes(key)
        if key not in self._keys:
            raise KeyringError(ERR_NOT_IN_KEYRING)
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove_key(self, key: bytes) -> None:
        """Drop a secondary key; removing a key that is not installed is a no-op."""
        key = bytes(key)
        if key == self._keys[0]:
            raise KeyringError(ERR_REMOVE_PRIMARY)
        if key in self._keys:
            self._keys.remove(key)
            self._ciphers.pop(key, None)

    # -- the packet seam (serfd.wire.packet.Keyring)

    def _cipher(self, key: bytes) -> AESGCM:
        c = self._ciphers.get(key)
        if c is None:
            # Imported on first use: the cryptography bindings cost about 7 MiB of RSS,
            # which an unencrypted agent should not pay.
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            c = self._ciphers[key] = AESGCM(key)
        return c

    def encrypted_length(self, n: int) -> int:
        return encrypted_length(self.version, n)

    def overhead(self) -> int:
        return encrypt_overhead(self.version)

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        """``[vsn][nonce][ciphertext+tag]`` with the primary key."""
        # os.urandom, as secrets.token_bytes: secrets would load OpenSSL's libcrypto
        # (hmac, hashlib) into every agent, encrypted or not.
        nonce = os.urandom(NONCE_SIZE)
        plain = bytes(data)
        if self.version == 0:
            pad = BLOCK_SIZE - len(plain) % BLOCK_SIZE
            plain += bytes((pad,)) * pad
        sealed = self._cipher(self._keys[0]).encrypt(nonce, plain, aad or None)
        return bytes((self.version,)) + nonce + sealed

    def decrypt(self, data: bytes, aad: bytes) -> bytes:
        """Open a payload with the first key that fits; :class:`DecryptError` when none does."""
        if not data:
            raise DecryptError("Cannot decrypt empty payload")
        vsn = data[0]
        if vsn > MAX_VERSION:
            raise DecryptError(f"Unsupported encryption version {vsn}")
        if len(data) < encrypted_length(vsn, 0):
            raise DecryptError(f"Payload is too small to decrypt: {len(data)}")
        nonce = bytes(data[VERSION_SIZE:VERSION_SIZE + NONCE_SIZE])
        sealed = bytes(data[VERSION_SIZE + NONCE_SIZE:])
        for key in self._keys:
            try:
                plain = self._cipher(key).decrypt(nonce, sealed, aad or None)
            except _invalid_tag():
                continue
            if vsn == 0:
                # Go slices off plain[-1] bytes unchecked (a panic on a bad pad); we refuse.
                if not plain or plain[-1] > len(plain):
                    raise DecryptError("bad PKCS#7 padding")
                plain = plain[: len(plain) - plain[-1]]
            return plain
        raise DecryptError("No installed keys could decrypt the message")

    def __repr__(self) -> str:  # never print key material
        return f"<Keyring {len(self._keys)} keys, vsn {self.version}>"


# --------------------------------------------------------------------------- the file


def read_keyring_file(path: Path) -> list[bytes]:
    """The keys of Serf's keyring file (JSON array of base64 strings, primary first)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise KeyringFileError(f"{path}: Failed to read keyring file: {e.strerror or e}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise KeyringFileError(f"{path}: Failed to decode keyring file: {e}") from None
    if not isinstance(doc, list) or not all(isinstance(k, str) for k in doc):
        raise KeyringFileError(f"{path}: Failed to decode keyring file: expected a JSON array "
                               "of base64 strings")
    keys: list[bytes] = []
    for i, text in enumerate(doc):
        try:
            keys.append(decode_key(text))
        except KeyringError as e:
            raise KeyringFileError(f"{path}: key #{i + 1}: Failed to decode key from keyring: "
                                   f"{e}") from None
    if not keys:
        raise KeyringFileError(f"{path}: Keyring file contains no keys")
    return keys


def write_keyring_file(path: Path, keys: Iterable[bytes]) -> None:
    """Atomically replace ``path`` with these keys (2-space JSON as Serf writes, mode 0600)."""
    path = Path(path)
    data = json.dumps([encode_key(k) for k in keys], indent=2).encode("ascii")
    replace_file(path, data, 0o600)


def keyring_path(encrypt_key: str | None, keyring_file: Path | None,
                 state_dir: Path) -> Path | None:
    """The keyring file the configuration names: ``keyring_file``, else
    ``<state_dir>/keyring`` when ``encrypt_key`` is set; None: no encryption."""
    if keyring_file is not None:
        return keyring_file
    return Path(state_dir) / "keyring" if encrypt_key else None


def keyring_from_config(
    encrypt_key: str | None, keyring_file: Path | None, state_dir: Path,
    log: logging.Logger | None = None,
) -> tuple[Keyring | None, Path | None]:
    """The agent's keyring and the file that persists it, from the configuration.

    * ``keyring_file`` set, or ``encrypt_key`` set (file ``<state_dir>/keyring``):
      encryption is on and the file is the keyring's home. An existing file wins over
      ``encrypt_key``, since it holds the keys rotated in since (as Consul does); a
      missing one is created from ``encrypt_key``.
    * neither: no encryption.

    Raises :class:`KeyringFileError` for a file that cannot be used.
    """
    log = log or logging.getLogger("serfd.keyring")
    path = keyring_path(encrypt_key, keyring_file, state_dir)
    if path is None:
        return None, None
    if path.exists():
        keys = read_keyring_file(path)
        if encrypt_key and decode_key(encrypt_key) not in keys:
            log.warning("encrypt_key is not in the keyring file %s (keys were rotated since): "
                        "using the keyring file", path)
        log.info("restored keyring with %d keys from %s", len(keys), path)
        return Keyring(keys), path
    if not encrypt_key:
        raise KeyringFileError(f"{path}: keyring file does not exist (set encrypt_key to "
                               "create it)")
    key = decode_key(encrypt_key)
    try:
        write_keyring_file(path, [key])
    except OSError as e:
        raise KeyringFileError(f"{path}: Failed to write keyring file: {e.strerror or e}") from None
    log.info("created keyring file %s from encrypt_key", path)
    return Keyring([key]), path
