"""serfd.agent.keys alone, over a fake gossip driver: the key-query hooks (answered at
once, or after the keyring file is written), the bounded line of changes, and
key_request, which ends on the query's done record (or when every member answered),
never by polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from serfd.agent.keys import MAX_KEY_CHANGES, KeyService
from serfd.core.keymanager import (
    decode_key_response,
    encode_key_response,
    request_payload,
)
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord, QueryRecordType
from serfd.core.serf import SerfError
from serfd.testing.clock import FakeClock
from serfd.wire.keyring import Keyring, encode_key

K1, K2 = bytes(range(16)), bytes(range(1, 17))
Hook = Callable[[IncomingQuery, float], "bytes | None"]


class FakeDriver:
    def __init__(self, members: int = 3) -> None:
        self.clock = FakeClock()
        self.hooks: dict[str, Hook] = {}
        self.answers: list[tuple[IncomingQuery, bytes]] = []
        self.queries: list[tuple[str, bytes, Callable[[QueryRecord], None]]] = []
        self.members = members
        self.is_alive = True
        self.refuse: str | None = None

    def set_internal_query_hook(self, kind: str, hook: Hook) -> None:
        self.hooks[kind] = hook

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        self.answers.append((q, payload))

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> int:
        if self.refuse:
            raise SerfError(self.refuse)
        self.queries.append((name, payload, on_record))
        return len(self.queries)

    def num_alive(self) -> int:
        return self.members

    def alive(self) -> bool:
        return self.is_alive

    def now(self) -> float:
        return self.clock.now()


class Spawner:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def wait(self) -> None:
        await asyncio.gather(*self.tasks)


def service(driver: FakeDriver, keyring: Keyring | None, path: Path | None,
            written: list[tuple[Path, list[bytes]]] | None = None,
            fail: OSError | None = None) -> tuple[KeyService, Spawner]:
    def write(p: Path, keys: list[bytes]) -> None:
        if fail is not None:
            raise fail
        if written is not None:
            written.append((p, list(keys)))

    spawn = Spawner()
    svc = KeyService(driver, keyring, path, node_name="a", response_limit=1024, spawn=spawn,
                     write_file=write)
    svc.install()
    return svc, spawn


def incoming(op: str, payload: bytes, qid: int = 1) -> IncomingQuery:
    return IncomingQuery(9, qid, f"_serf_{op}", payload, "peer", 1060.0)


def test_hooks_for_every_key_query_and_list_keys_answered_at_once() -> None:
    async def main() -> None:
        driver = FakeDriver()
        service(driver, Keyring([K1]), None)
        assert sorted(driver.hooks) == ["install-key", "list-keys", "remove-key", "use-key"]
        answer = driver.hooks["list-keys"](incoming("list-keys", b""), 0.0)
        assert answer is not None
        resp = decode_key_response(answer[1:])
        assert resp.result and list(resp.keys) == [encode_key(K1)]

    asyncio.run(main())


def test_a_change_is_answered_after_the_keyring_file_is_written(tmp_path: Path) -> None:
    async def main() -> None:
        driver = FakeDriver()
        ring = Keyring([K1])
        written: list[tuple[Path, list[bytes]]] = []
        _svc, spawn = service(driver, ring, tmp_path / "keyring", written)
        q = incoming("install-key", request_payload(K2))
        assert driver.hooks["install-key"](q, 0.0) is None  # answered later
        assert driver.answers == []
        await spawn.wait()
        assert written == [(tmp_path / "keyring", [K1, K2])]
        [(answered_q, payload)] = driver.answers
        assert answered_q is q and decode_key_response(payload[1:]).result
        assert K2 in ring.keys

    asyncio.run(main())


def test_a_failed_file_write_is_the_answer(tmp_path: Path) -> None:
    async def main() -> None:
        driver = FakeDriver()
        _svc, spawn = service(driver, Keyring([K1]), tmp_path / "keyring",
                              fail=OSError(28, "No space left on device"))
        driver.hooks["install-key"](incoming("install-key", request_payload(K2)), 0.0)
        await spawn.wait()
        resp = decode_key_response(driver.answers[0][1][1:])
        assert not resp.result
        assert resp.message == "Failed to write keyring file: [Errno 28] No space left on device"

    asyncio.run(main())


def test_changes_wait_in_a_bounded_line_one_at_a_time() -> None:
    async def main() -> None:
        driver = FakeDriver()
        svc, spawn = service(driver, Keyring([K1]), None)
        await svc._lock.acquire()  # a change in progress
        out = [driver.hooks["install-key"](incoming("install-key", request_payload(K2), i), 0.0)
               for i in range(MAX_KEY_CHANGES + 3)]
        assert out[:MAX_KEY_CHANGES] == [None] * MAX_KEY_CHANGES
        assert out[MAX_KEY_CHANGES:] == [encode_key_response(
            False, "too many key changes in progress", None, "")] * 3
        assert svc.counters["key_change_refused"] == 3
        assert svc.changes_waiting == MAX_KEY_CHANGES
        svc._lock.release()
        await spawn.wait()
        assert len(driver.answers) == MAX_KEY_CHANGES and svc.changes_waiting == 0

    asyncio.run(main())


def _answer(ok: bool) -> bytes:
    return bytes((8,)) + encode_key_response(ok, "" if ok else "nope", None, "")[1:]


def test_key_request_ends_on_the_done_record_and_tallies_responses() -> None:
    async def main() -> None:
        driver = FakeDriver(members=3)
        svc, _spawn = service(driver, Keyring([K1]), None)
        task = asyncio.ensure_future(svc.key_request("install-key", encode_key(K2)))
        await asyncio.sleep(0)
        [(name, payload, on_record)] = driver.queries
        assert name == "_serf_install-key" and payload == request_payload(K2)
        on_record(QueryRecord(QueryRecordType.ACK, "n1"))
        on_record(QueryRecord(QueryRecordType.RESPONSE, "n1", _answer(True)))
        on_record(QueryRecord(QueryRecordType.RESPONSE, "n2", _answer(False)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()  # n3 has not answered and the query is not over
        on_record(QueryRecord(QueryRecordType.DONE))
        body, err = await task
        assert (body["NumNodes"], body["NumResp"], body["NumErr"]) == (3, 2, 1)
        assert err == "1/3 nodes reported failure"

    asyncio.run(main())


def test_key_request_ends_once_every_member_answered() -> None:
    async def main() -> None:
        driver = FakeDriver(members=2)
        svc, _spawn = service(driver, Keyring([K1]), None)
        task = asyncio.ensure_future(svc.key_request("use-key", encode_key(K1)))
        await asyncio.sleep(0)
        on_record = driver.queries[0][2]
        on_record(QueryRecord(QueryRecordType.RESPONSE, "n1", _answer(True)))
        on_record(QueryRecord(QueryRecordType.RESPONSE, "n2", _answer(True)))
        body, err = await task  # no done record needed
        assert (body["NumResp"], err) == (2, "")

    asyncio.run(main())


@pytest.mark.parametrize(("key", "alive", "refuse", "want"), [
    ("not base64!", True, None, "illegal base64"),
    (encode_key(K2), False, None, "Serf can't query after Leave or Shutdown"),
    (encode_key(K2), True, "too many queries in progress (64): try again when one finishes",
     "too many queries in progress"),
])
def test_key_request_refusals(key: str, alive: bool, refuse: str | None, want: str) -> None:
    async def main() -> tuple[dict[str, Any], str]:
        driver = FakeDriver()
        driver.is_alive = alive
        driver.refuse = refuse
        svc, _spawn = service(driver, Keyring([K1]), None)
        return await svc.key_request("install-key", key)

    body, err = asyncio.run(main())
    assert want in err and body["NumResp"] == 0
