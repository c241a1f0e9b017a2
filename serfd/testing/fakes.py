"""Small test doubles shared by the unit tests.

``GcmKeyring`` is the packet/stream keyring seam reduced to memberlist's encryption
version 1 (``[1][nonce 12][AES-GCM ciphertext + tag 16]``) with no key management: the
real :class:`serfd.wire.keyring.Keyring` is tested on its own, and the framing tests check
their bytes against this independent implementation.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serfd.wire.codec import DecodeError

__all__ = ["KEY_A", "KEY_B", "GcmKeyring"]


class GcmKeyring:
    """memberlist encryption version 1 (``[1][nonce 12][ciphertext + tag 16]``), for tests."""

    def __init__(self, *keys: bytes) -> None:
        self.keys = list(keys)

    def encrypted_length(self, n: int) -> int:
        return n + 29

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return b"\x01" + nonce + AESGCM(self.keys[0]).encrypt(nonce, data, aad)

    def decrypt(self, data: bytes, aad: bytes) -> bytes:
        if len(data) < 29 or data[0] != 1:
            raise DecodeError("bad encrypted payload")
        for key in self.keys:
            try:
                return AESGCM(key).decrypt(data[1:13], data[13:], aad)
            except InvalidTag:
                continue
        raise DecodeError("no installed keys could decrypt the message")


KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 17))
