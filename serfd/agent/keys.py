"""Keys: answering the cluster's ``_serf_*-key`` queries, and asking them for RPC.

Theory of operation
-------------------
Key rotation is a Serf query (serfd.core.keymanager has the wire format and the pure
halves). :class:`KeyService` is the agent's side of it:

* **answering**: it registers a hook per key query with the Serf core. ``list-keys``
  (and any query when encryption is off) is answered at once from memory. A change
  (install/use/remove) is applied under one lock, one at a time, and the keyring file
  rewritten off the loop before the answer goes out, so an answer of success means the
  key is on disk; at most ``MAX_KEY_CHANGES`` wait for the lock, more are refused
  (``key_change_refused``).
* **asking** (RPC ``install-key`` etc.): :meth:`KeyService.key_request` starts the query
  and tallies each response as its record arrives; it ends on the query's ``done``
  record, or as soon as every member (memberlist's NumMembers when it started) has
  answered. No polling, no sleeps: the records are the core's events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from serfd.base.ratelog import DropLog
from serfd.core.keymanager import (
    KEY_QUERIES,
    KeyResponder,
    KeyResult,
    decode_key_arg,
    decode_key_response,
    encode_key_response,
    final_error,
    request_payload,
    response_fits_for,
    tally,
)
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord, QueryRecordType
from serfd.core.serf import SerfError
from serfd.wire.keyring import Keyring, KeyringError, write_keyring_file

__all__ = ["MAX_KEY_CHANGES", "KeyDriver", "KeyService"]

log = logging.getLogger("serfd.agent")

# Ours: key changes asked by peers (_serf_install-key etc.) waiting for the keyring lock
# and the file write; a rotation needs one at a time, so beyond this many are refused.
MAX_KEY_CHANGES = 16


class KeyDriver(Protocol):
    """What keys need from the gossip driver."""

    def set_internal_query_hook(self, kind: str,
                                hook: Callable[[IncomingQuery, float], bytes | None]) -> None: ...

    def respond(self, q: IncomingQuery, payload: bytes) -> None: ...

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> int: ...

    def num_alive(self) -> int: ...

    def alive(self) -> bool: ...

    def now(self) -> float: ...


# Writes the keyring file (path, keys); run off the loop.
KeyringWriter = Callable[[Path, list[bytes]], None]


class KeyService:
    """Answers and asks the key queries (module docstring)."""

    def __init__(self, driver: KeyDriver, keyring: Keyring | None, keyring_path: Path | None,
                 *, node_name: str, response_limit: int,
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 counters: dict[str, int] | None = None,
                 write_file: KeyringWriter = write_keyring_file) -> None:
        self.driver = driver
        self.keyring = keyring
        self.keyring_path = keyring_path
        self.responder = KeyResponder(keyring,
                                      response_fits=response_fits_for(node_name, response_limit))
        self._spawn = spawn
        self.counters: dict[str, int] = counters if counters is not None else {}
        self.drops = DropLog(log, self.counters)
        self._write_file = write_file
        self._lock = asyncio.Lock()  # one key change at a time (memory, then file)
        self._changes = 0  # answers waiting for the lock or the file (MAX_KEY_CHANGES)

    @property
    def changes_waiting(self) -> int:
        return self._changes

    def install(self) -> None:
        """Answer Serf's ``_serf_*-key`` queries from now on."""
        for op in KEY_QUERIES:
            self.driver.set_internal_query_hook(op, self._hook(op))

    def _hook(self, op: str) -> Callable[[IncomingQuery, float], bytes | None]:
        return lambda q, now: self.on_key_query(op, q)

    # ------------------------------------------------------------------ answering

    def on_key_query(self, op: str, q: IncomingQuery) -> bytes | None:
        """The core's hook: the answer now, or None when it comes later (a change)."""
        if op == "list-keys" or self.keyring is None:
            return self.responder.answer(op, q.payload)
        if self._changes >= MAX_KEY_CHANGES:
            self.drops.drop("key_change_refused", self.driver.now(),
                            "%d key changes in progress: refusing %s from %s",
                            self._changes, op, q.source_node)
            return encode_key_response(False, "too many key changes in progress", None, "")
        self._changes += 1
        self._spawn(self._answer_change(op, q))  # the file is written off the loop
        return None

    async def _answer_change(self, op: str, q: IncomingQuery) -> None:
        try:
            answer = await self._change(op, q)
        finally:
            self._changes -= 1
        try:
            self.driver.respond(q, answer)
        except SerfError as e:
            log.error("failed to respond to key query: %s", e)

    async def _change(self, op: str, q: IncomingQuery) -> bytes:
        async with self._lock:
            answer = self.responder.answer(op, q.payload)  # changes the keyring in memory
            assert answer is not None
            path = self.keyring_path
            if path is not None and self.keyring is not None and \
                    decode_key_response(answer[1:]).result:
                keys = self.keyring.keys
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, self._write_file, path, keys)
                    log.info("keyring file %s rewritten after %s (%d keys)", path, op, len(keys))
                except OSError as e:
                    err = f"Failed to write keyring file: {e}"
                    log.error("%s", err)
                    answer = encode_key_response(False, err, None, "")
            return answer

    # ------------------------------------------------------------------ asking

    async def key_request(self, op: str, key: str) -> tuple[dict[str, Any], str]:
        """RPC install-key/use-key/remove-key/list-keys: query every member and tally;
        (the RPC body, Serf's error text or "")."""
        result = KeyResult()
        with_keys = op == "list-keys"
        raw = b""
        if not with_keys:
            try:
                raw = decode_key_arg(key)
            except KeyringError as e:
                return result.rpc_body(with_keys), str(e)
        if not self.driver.alive():
            return result.rpc_body(with_keys), "Serf can't query after Leave or Shutdown"
        log.info("initiating %s", op)
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_record(rec: QueryRecord) -> None:
            # The done record ends the wait at the latest; every member answering, sooner.
            if rec.type is QueryRecordType.RESPONSE:
                tally(result, rec.from_, rec.payload)
            over = rec.type is QueryRecordType.DONE or result.num_resp >= result.num_nodes
            if over and not answered.done():
                answered.set_result(None)

        result.num_nodes = self.driver.num_alive()
        try:
            self.driver.query(f"_serf_{op}", request_payload(raw), QueryParam(), on_record)
        except SerfError as e:
            return result.rpc_body(with_keys), str(e)
        await answered
        return result.rpc_body(with_keys), final_error(result)
