"""Bytes on the wire: memberlist's and Serf's messages and the envelopes around them.

Theory of operation
-------------------
Everything here turns bytes into typed values and back, and nothing more: no state beyond
the keyring, no IO, no clock. Whatever a peer can get wrong surfaces as one exception,
:class:`~serfd.wire.codec.DecodeError` (its subclass ``DecryptError`` when no key opens a
message), which the layers above count and drop.

* ``codec``: the go-msgpack dialect Serf 0.9.4 speaks (raw strings on gossip, str/bin on
  RPC), struct schemas as tuples of fields in Go's order.
* ``messages`` and ``serf_messages``: memberlist's and Serf's message types as frozen
  dataclasses, ``encode()`` to ``[type][msgpack]`` and a ``decode_*`` back.
* The envelopes, outermost last, as memberlist applies them: ``packet`` (UDP: compound,
  LZW via ``lzw``, CRC, encryption) and ``framing`` (TCP: one message per exchange,
  compression, encryption, push/pull state).
* ``keyring``: memberlist's AES-GCM keyring (primary key first) and its JSON file; the
  envelopes take it as a seam with ``encrypt(data, aad)`` / ``decrypt(data, aad)``.
"""
