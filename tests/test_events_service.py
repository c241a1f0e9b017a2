"""serfd.agent.events.EventsService on a FakeClock: coalescing windows, dispatch to handlers
and RPC stream subscribers, the handler-response path for queries, reload, the RPC side.

No serf binary, no root, no real time: the coalescing windows move only when the test
advances the clock. Handlers are real /bin/sh commands (short ones); the test waits on
their completion, never on a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from serfd.agent.config import Config, ConfigError
from serfd.agent.events import EventsService
from serfd.agent.rpc_server import RPCError
from serfd.core.coalesce import COALESCE_PERIOD, QUIESCENT_PERIOD
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import IncomingQuery, QueryParam, QueryRecord
from serfd.core.serf import EventType, MemberEvent, SerfError, UserEvent
from serfd.testing.clock import FakeClock
from serfd.wire.serf_messages import MessageQueryResponse

SELF = Member("self", "127.0.0.1", 7946, {"role": "web"})


def member(name: str) -> Member:
    return Member(name, "10.0.0.1", 7946, {})


def join(name: str) -> MemberEvent:
    return MemberEvent(EventType.MEMBER_JOIN, (member(name),))


def leave(name: str) -> MemberEvent:
    return MemberEvent(EventType.MEMBER_LEAVE, (member(name),))


class Gossip:
    """A GossipAPI that records what the service asked; ``refuse`` makes calls fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []
        self.queries: list[tuple[str, bytes, QueryParam, Callable[[QueryRecord], None]]] = []
        self.responses: list[tuple[IncomingQuery, bytes]] = []
        self.refuse: SerfError | None = None
        self.is_alive = True

    def local_member(self) -> Member:
        return SELF

    def alive(self) -> bool:
        return self.is_alive

    def user_event(self, name: str, payload: bytes, coalesce: bool) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((name, payload, coalesce))

    def query(self, name: str, payload: bytes, param: QueryParam,
              on_record: Callable[[QueryRecord], None]) -> object:
        if self.refuse is not None:
            raise self.refuse
        self.queries.append((name, payload, param, on_record))
        return "a pending query"

    def respond(self, q: IncomingQuery, payload: bytes) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.responses.append((q, payload))


class Rig:
    """An EventsService on a FakeClock, a recording gossip side and one RPC subscriber."""

    def __init__(self, tmp: Path, **config: Any) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.gossip = Gossip()
        self.tasks: set[asyncio.Task[None]] = set()
        self.config = Config(node_name="self", **config)
        self.svc = EventsService(self.config, self.gossip, clock=self.clock, spawn=self.spawn,
                                 config_dir=tmp)
        self.seen: list[AnyEvent] = []
        self.svc.subscribe_events(self.seen.append)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def handlers_done(self) -> None:
        """Wait for every handler run (and the runs they started) to finish."""
        while self.tasks:
            await asyncio.wait_for(asyncio.gather(*list(self.tasks)), 10.0)  # a hang guard


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def log_to(path: Path, what: str) -> str:
    """A handler command appending ``what`` (shell-expanded) as a line to ``path``."""
    return f'printf "%s\\n" "{what}" >> {path}'


# ------------------------------------------------------------------ member coalescing


def test_join_then_leave_of_one_node_within_the_window_delivers_the_leave_once(
        tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def main() -> None:
        r = Rig(tmp_path, handlers={"member-join,member-leave":
                                    f'{{ echo "$SERF_EVENT"; cat; }} >> {out}'})
        r.svc.event(join("n1"))
        await r.clock.advance(0.5)
        r.svc.event(leave("n1"))
        await r.clock.advance(0.75)  # 1.25 s in: 0.75 s after the leave, still quiet
        assert r.seen == []
        await r.clock.advance(0.25)  # the quiescent period after the leave is over
        assert r.seen == [leave("n1")]
        await r.clock.advance(10.0)
        assert r.seen == [leave("n1")]  # once
        await r.handlers_done()
        assert out.read_text() == "member-leave\nn1\t10.0.0.1\t\t\n"

    run(main)


def test_member_batch_is_flushed_a_quiescent_period_after_the_last_event(
        tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        r.svc.event(join("n1"))
        await r.clock.advance(0.5)
        r.svc.event(join("n2"))
        await r.clock.advance(QUIESCENT_PERIOD - 0.25)  # 1 s after n1, 0.75 s after n2
        assert r.seen == []
        await r.clock.advance(0.25)
        assert r.seen == [MemberEvent(EventType.MEMBER_JOIN, (member("n1"), member("n2")))]

    run(main)


def test_member_batch_is_flushed_at_the_coalesce_period_however_busy(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        for i in range(6):  # one every 0.5 s: never quiet for a whole second
            r.svc.event(join(f"n{i}"))
            await r.clock.advance(0.5 if i < 5 else 0.25)
        assert r.seen == []  # 2.75 s after the first event
        await r.clock.advance(COALESCE_PERIOD - 2.75)
        assert r.seen == [MemberEvent(EventType.MEMBER_JOIN,
                                      tuple(member(f"n{i}") for i in range(6)))]

    run(main)


# ------------------------------------------------------------------ user-event coalescing


def test_coalesced_user_events_keep_the_latest_per_name(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        r.svc.event(UserEvent(1, "deploy", b"v1", True))
        r.svc.event(UserEvent(1, "other", b"x", True))
        await r.clock.advance(0.5)
        r.svc.event(UserEvent(2, "deploy", b"v2", True))
        r.svc.event(UserEvent(1, "deploy", b"old", True))  # older than what is held
        await r.clock.advance(0.75)
        assert r.seen == []
        await r.clock.advance(0.25)
        assert sorted(r.seen, key=str) == sorted(
            [UserEvent(2, "deploy", b"v2", True), UserEvent(1, "other", b"x", True)], key=str)

    run(main)


def test_user_events_without_coalesce_and_queries_go_straight_through(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        ev = UserEvent(1, "deploy", b"v1", False)
        q = IncomingQuery(ltime=1, id=7, name="ping", payload=b"", source_node="n1",
                          deadline=r.clock.now() + 10.0)
        r.svc.event(ev)
        r.svc.event(UserEvent(2, "deploy", b"v2", False))
        r.svc.event(q)
        assert r.seen == [ev, UserEvent(2, "deploy", b"v2", False), q]
        assert r.clock.pending() == 0  # no coalescing window was opened

    run(main)


def test_stop_disarms_the_window(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        r.svc.start()
        r.svc.event(join("n1"))
        assert r.clock.pending() == 1
        r.svc.stop()
        assert r.clock.pending() == 0
        await r.clock.advance(10.0)
        assert r.seen == []

    run(main)


# ------------------------------------------------------------------ dispatch


def test_every_subscriber_gets_each_event_and_a_broken_one_is_counted(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        other: list[AnyEvent] = []

        def broken(ev: AnyEvent) -> None:
            raise RuntimeError("bug")

        r.svc.subscribe_events(broken)
        unsubscribe = r.svc.subscribe_events(other.append)
        first = UserEvent(1, "a", b"", False)
        r.svc.event(first)
        unsubscribe()
        unsubscribe()  # idempotent
        r.svc.event(UserEvent(2, "b", b"", False))
        assert [e.name for e in r.seen if isinstance(e, UserEvent)] == ["a", "b"]
        assert other == [first]
        assert r.svc.counters["event_delivery_errors"] == 2

    run(main)


def test_handlers_run_for_the_events_their_filters_match(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def main() -> None:
        r = Rig(tmp_path, handlers={
            "user:deploy": log_to(out, "deploy $SERF_USER_EVENT $SERF_USER_LTIME"),
            "user": log_to(out, "any $SERF_USER_EVENT"),
            "member-join": log_to(out, "join"),
        })
        r.svc.event(UserEvent(4, "deploy", b"", False))
        await r.handlers_done()
        r.svc.event(UserEvent(5, "restart", b"", False))
        await r.handlers_done()
        assert sorted(out.read_text().splitlines()) == [
            "any deploy", "any restart", "deploy deploy 4"]

    run(main)


# ------------------------------------------------------------------ handler responses


def query(clock: FakeClock, name: str = "ping") -> IncomingQuery:
    return IncomingQuery(ltime=3, id=42, name=name, payload=b"", source_node="n1",
                         deadline=clock.now() + 30.0)


def test_a_query_handlers_stdout_is_the_response(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path, handlers={"query:ping": "echo pong", "query:fail": "echo no; exit 3"})
        q = query(r.clock)
        r.svc.event(q)
        r.svc.event(query(r.clock, "fail"))
        await r.handlers_done()
        assert r.gossip.responses == [(q, b"pong\n")]  # a failed run does not answer

    run(main)


def test_an_oversized_handler_response_is_cut_to_the_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        r = Rig(tmp_path, handlers={"query": "head -c 3000 /dev/zero | tr '\\0' x"},
                query_response_size_limit=1024)
        q = query(r.clock)
        r.svc.event(q)
        await r.handlers_done()
        [(got_q, payload)] = r.gossip.responses
        assert got_q == q and set(payload) == {ord("x")}

        def size(n: int) -> int:
            return len(MessageQueryResponse(ltime=q.ltime, id=q.id, from_="self", flags=0,
                                            payload=b"x" * n).encode())

        assert size(len(payload)) <= 1024 < size(len(payload) + 1)  # the most that fits

    with caplog.at_level(logging.WARNING, "serfd.agent"):
        run(main)
    assert "over the 1024-byte limit: truncated" in caplog.text


def test_a_response_the_core_refuses_is_counted_not_raised(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path, handlers={"query": "echo late"})
        r.gossip.refuse = SerfError("response is past the deadline")
        r.svc.event(query(r.clock))
        await r.handlers_done()
        assert r.gossip.responses == []
        assert r.svc.counters["handler_response"] == 1

    run(main)


# ------------------------------------------------------------------ reload


def test_reload_rebuilds_the_handlers_and_their_limits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    script = other / "greet"
    script.write_text(f'#!/bin/sh\necho "greet $SERF_USER_EVENT" >> {out}\n')
    script.chmod(0o755)

    async def main() -> None:
        r = Rig(tmp_path, handlers={"user": log_to(out, "old $SERF_USER_EVENT")})
        r.svc.event(UserEvent(1, "one", b"", False))
        await r.handlers_done()
        new = Config(node_name="self", handlers={"user": "greet"}, handlers_dir=other,
                     handler_max_concurrent=3, handler_timeout=5.0)
        r.svc.reload(r.config, new)
        assert r.svc.config is new and r.svc.handlers_dir() == other
        assert r.svc.handler_runner.timeout == 5.0
        r.svc.event(UserEvent(2, "two", b"", False))
        await r.handlers_done()
        assert out.read_text().splitlines() == ["old one", "greet two"]
        # A table that does not parse changes nothing.
        bad = Config(node_name="self", handlers={"no-such-event": "true"})
        with pytest.raises(ConfigError, match="handlers: "):
            r.svc.reload(new, bad)
        assert r.svc.config is new
        r.svc.event(UserEvent(3, "three", b"", False))
        await r.handlers_done()
        assert out.read_text().splitlines() == ["old one", "greet two", "greet three"]

    run(main)


def test_the_handlers_directory_defaults_to_the_config_directory(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        assert r.svc.handlers_dir() == tmp_path / "handlers"

    run(main)


# ------------------------------------------------------------------ the RPC side


def test_rpc_user_events_queries_and_responses_go_to_the_gossip_side(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        r.svc.user_event("deploy", b"v1", True)
        assert r.gossip.sent == [("deploy", b"v1", True)]
        records: list[QueryRecord] = []
        param = QueryParam(timeout=2.0)
        assert r.svc.query("uptime", b"", param, records.append) == "a pending query"
        assert r.svc.query("_serf_ping", b"", param, records.append) == "a pending query"
        assert [(name, p) for name, _, p, _ in r.gossip.queries] == [
            ("uptime", param), ("_serf_ping", param)]
        assert r.gossip.queries[0][3] == records.append  # the records go to the asker
        q = query(r.clock)
        r.svc.respond(q, b"ok")
        assert r.gossip.responses == [(q, b"ok")]

    run(main)


def test_rpc_refusals_come_back_as_rpc_errors_with_serfs_text(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        with pytest.raises(RPCError, match="Queries cannot contain the '_serf_' prefix"):
            r.svc.query("_serf_install-key", b"", QueryParam(), lambda rec: None)
        with pytest.raises(RPCError, match="prefix"):
            r.svc.query("_serf_ping", b"payload", QueryParam(), lambda rec: None)
        assert r.gossip.queries == []
        r.gossip.refuse = SerfError("user event exceeds configured limit of 512 bytes")
        with pytest.raises(RPCError, match=r"^user event exceeds configured limit of 512 bytes$"):
            r.svc.user_event("big", b"x" * 600, False)
        r.gossip.refuse = SerfError("too many queries in progress (64): try again")
        with pytest.raises(RPCError, match=r"^too many queries in progress \(64\): try again$"):
            r.svc.query("uptime", b"", QueryParam(), lambda rec: None)
        r.gossip.refuse = None
        r.gossip.is_alive = False  # leaving or left
        with pytest.raises(RPCError, match=r"^Serf can't query after Leave or Shutdown$"):
            r.svc.query("uptime", b"", QueryParam(), lambda rec: None)
        assert r.gossip.queries == []
        r.gossip.refuse = SerfError("response already sent")
        with pytest.raises(RPCError, match=r"^response already sent$"):
            r.svc.respond(query(r.clock), b"again")

    run(main)


def test_monitor_lines_flow_between_start_and_stop(tmp_path: Path) -> None:
    async def main() -> None:
        r = Rig(tmp_path)
        lines: list[str] = []
        r.svc.subscribe_logs(logging.WARNING, lines.append)
        logging.getLogger("serfd.test").warning("before start")
        r.svc.start()
        logging.getLogger("serfd.test").warning("while started")
        r.svc.stop()
        logging.getLogger("serfd.test").warning("after stop")
        assert [line.split(": ", 1)[1] for line in lines] == ["while started"]
        assert "[WARN] serfd.test" in lines[0]

    run(main)
