"""serfd.agent.rpc_adapter.RPCAdapter: each RPC command reaches the service that owns it,
and each refusal comes back as an RPCError with Serf's text. Fakes for every service; no
sockets, no clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from serfd.agent.events import EventsService
from serfd.agent.joins import JoinFailed
from serfd.agent.rpc_adapter import RPCAdapter
from serfd.agent.rpc_server import RPCError
from serfd.agent.tags import TagService
from serfd.core.member import Member
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord
from serfd.core.serf import SerfError


class Gossip:
    def __init__(self) -> None:
        self.tags_now = {"role": "web", "dc": "x1", "old": "1"}
        self.force: list[tuple[str, bool]] = []
        self.force_error: BaseException | None = None
        self.refuse_tags = False

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.tags_now)

    def members(self) -> list[Member]:
        return [Member("a", "127.0.0.1", 7946, self.tags_now)]

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.refuse_tags:
            raise SerfError("Encoded length of tags exceeds limit of 512 bytes")
        self.tags_now = dict(tags)

    async def force_leave(self, node: str, prune: bool) -> None:
        self.force.append((node, prune))
        if self.force_error is not None:
            raise self.force_error


class Joins:
    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[tuple[list[str], bool]] = []
        self.error = error

    async def join(self, texts: list[str], replay: bool) -> int:
        self.calls.append((texts, replay))
        if self.error is not None:
            raise self.error
        return len(texts)


class Keys:
    async def key_request(self, op: str, key: str) -> tuple[dict[str, Any], str]:
        return {"op": op, "key": key}, ""


class Events:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        self.calls.append(("event", (name, payload, coalesce)))

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        self.calls.append(("query", name))
        return 7

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        self.calls.append(("respond", payload))

    def subscribe_events(self, cb: Callable[[Any], None]) -> Callable[[], None]:
        self.calls.append(("subscribe_events", None))
        return lambda: None

    def subscribe_logs(self, level: int, cb: Callable[[str], None]) -> Callable[[], None]:
        self.calls.append(("subscribe_logs", level))
        return lambda: None


def adapter(gossip: Gossip | None = None, joins: Joins | None = None,
            events: Events | None = None) -> tuple[RPCAdapter, list[str]]:
    gossip = gossip or Gossip()
    # The node's tags as the configuration's, no tags file (tests/test_tags.py has the rest).
    tags = TagService(gossip, gossip.tags, None, {})
    lifecycle: list[str] = []

    async def leave() -> None:
        lifecycle.append("leave")

    async def reload() -> list[str]:
        lifecycle.append("reload")
        return ["x.toml: tags: bad"]

    a = RPCAdapter(gossip=gossip, joins=joins or Joins(), keys=Keys(), tags=tags,
                   events=cast(EventsService, events or Events()), leave=leave, reload=reload,
                   stats=lambda: {"agent": {"name": "a"}})
    return a, lifecycle


def test_set_tags_is_current_minus_deleted_plus_new() -> None:
    g = Gossip()
    a, _ = adapter(gossip=g)
    asyncio.run(a.set_tags({"role": "db", "new": "y"}, ["old", "absent"]))
    assert g.tags_now == {"role": "db", "dc": "x1", "new": "y"}


def test_tags_the_core_refuses_are_an_rpc_error_and_change_nothing() -> None:
    g = Gossip()
    g.refuse_tags = True
    a, _ = adapter(gossip=g)
    with pytest.raises(RPCError, match="exceeds limit of 512 bytes"):
        asyncio.run(a.set_tags({"k": "v"}, []))
    assert g.tags_now == {"role": "web", "dc": "x1", "old": "1"}


def test_tags_too_large_are_serfs_error_before_the_core_sees_them() -> None:
    g = Gossip()
    a, _ = adapter(gossip=g)
    with pytest.raises(RPCError, match=r"^Encoded length of tags exceeds limit of 512 bytes$"):
        asyncio.run(a.set_tags({"k": "v" * 600}, []))
    assert g.tags_now == {"role": "web", "dc": "x1", "old": "1"}


def test_reset_tags_goes_back_to_the_configuration() -> None:
    g = Gossip()
    a, _ = adapter(gossip=g)

    async def run() -> None:
        await a.set_tags({"role": "db", "new": "y"}, ["dc"])
        assert g.tags_now == {"role": "db", "old": "1", "new": "y"}
        await a.reset_tags(["role"])
        assert g.tags_now == {"role": "web", "old": "1", "new": "y"}
        await a.reset_tags([])
        assert g.tags_now == {"role": "web", "dc": "x1", "old": "1"}

    asyncio.run(run())


@pytest.mark.parametrize("error", [
    JoinFailed("1 error occurred:\n\t* Failed to join 10.0.0.9: i/o timeout\n\n"),
    SerfError("Serf can't Join after Leave or Shutdown"),
])
def test_join_refusals_carry_the_text_to_the_client(error: Exception) -> None:
    a, _ = adapter(joins=Joins(error))
    with pytest.raises(RPCError) as info:
        asyncio.run(a.join(["10.0.0.9"], False))
    assert str(info.value) == str(error)


def test_join_passes_the_addresses_and_replay_and_returns_the_count() -> None:
    joins = Joins()
    a, _ = adapter(joins=joins)
    assert asyncio.run(a.join(["h1", "h2:7947"], True)) == 2
    assert joins.calls == [(["h1", "h2:7947"], True)]


def test_a_force_leave_that_times_out_is_serfs_error_text() -> None:
    g = Gossip()
    g.force_error = TimeoutError()
    a, _ = adapter(gossip=g)
    with pytest.raises(RPCError, match=r"^timed out broadcasting node removal$"):
        asyncio.run(a.force_leave("b", True))
    assert g.force == [("b", True)]


def test_lifecycle_commands_go_to_the_agent() -> None:
    a, lifecycle = adapter()
    asyncio.run(a.leave())
    assert asyncio.run(a.reload()) == ["x.toml: tags: bad"]
    assert lifecycle == ["leave", "reload"]
    assert a.stats() == {"agent": {"name": "a"}}
    assert [m.name for m in a.members()] == ["a"]
    assert asyncio.run(a.key_request("use-key", "k")) == ({"op": "use-key", "key": "k"}, "")


def test_events_queries_and_streams_go_to_the_events_service() -> None:
    ev = Events()
    a, _ = adapter(events=ev)
    asyncio.run(a.user_event("deploy", b"v2", True))
    assert a.query("ping", b"", QueryParam(), lambda r: None) == 7
    a.respond(cast(IncomingQuery, object()), b"pong")
    a.subscribe_events(lambda e: None)()
    a.subscribe_logs(20, lambda line: None)()
    assert ev.calls == [("event", ("deploy", b"v2", True)), ("query", "ping"),
                        ("respond", b"pong"), ("subscribe_events", None),
                        ("subscribe_logs", 20)]
