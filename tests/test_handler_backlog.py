"""serfd.agent.handlers and serfd.core.coalesce bounds: a flood of events from a peer keeps handler
tasks, the backlog and coalescing batches bounded, and counts what was cut.

No processes are started: the runner's ``_exec`` is replaced by a fake run that waits
until the test lets it finish, so "handlers are slow" is exact, not timed; time is a
FakeClock that moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

from serfd.agent.dispatch import Dispatcher
from serfd.agent.handlers import BACKLOG, MEMBER_BACKLOG, Handler, HandlerRunner, parse_handlers
from serfd.base.ratelog import DropLog
from serfd.core.coalesce import MemberCoalescer, UserCoalescer
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import IncomingQuery
from serfd.core.serf import EventType, MemberEvent, UserEvent
from serfd.testing.clock import FakeClock

SELF = Member("self", "127.0.0.1", 7946, {})


class StuckRunner(HandlerRunner):
    """Every run blocks until ``gate`` is set; records what ran, in order."""

    def __init__(self, handlers: tuple[Handler, ...], max_concurrent: int,
                 clock: FakeClock, counters: dict[str, int]) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.gate = asyncio.Event()
        self.ran: list[tuple[str, AnyEvent]] = []
        self.log_lines: list[str] = []
        super().__init__(handlers, Path("/nonexistent"), max_concurrent=max_concurrent,
                         timeout=60.0, self_member=lambda: SELF,
                         respond=lambda q, out, label: None, spawn=self._track,
                         drops=DropLog(logging.getLogger("test.handlers"), counters),
                         clock=clock)

    def _track(self, coro: Awaitable[None]) -> object:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _exec(self, h: Handler, ev: AnyEvent) -> None:
        self.ran.append((h.route, ev))
        await self.gate.wait()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def query(i: int, deadline: float) -> IncomingQuery:
    return IncomingQuery(ltime=i, id=i, name="probe", payload=b"x", source_node="peer",
                         deadline=deadline)


def test_flood_of_user_events_and_long_queries_keeps_handler_work_bounded() -> None:
    # The acceptance flood: 1,500 user events and 500 queries with a 1000 h timeout.
    async def main() -> None:
        clock = FakeClock()
        counters: dict[str, int] = {}
        handlers = parse_handlers({"user": "true", "query": "true"})
        r = StuckRunner(handlers, max_concurrent=4, clock=clock, counters=counters)
        events: list[AnyEvent] = [UserEvent(i, f"ev{i}", b"p" * 100, False) for i in range(1500)]
        events += [query(i, clock.now() + 3_600_000.0) for i in range(500)]
        peak_tasks = 0
        for ev in events:
            r.dispatch(ev)
            peak_tasks = max(peak_tasks, len(r.tasks))
            assert r.queued <= BACKLOG
        await settle()
        peak_tasks = max(peak_tasks, len(r.tasks))
        assert peak_tasks <= 4  # tasks only for runs holding a slot
        assert r.running == 4
        assert r.queued == BACKLOG
        dropped = counters.get("handler_backlog_user", 0) + counters.get("handler_backlog_query", 0)
        assert dropped == 2000 - 4 - BACKLOG
        assert counters["handler_backlog_query"] == 500  # the queries came last: all cut
        # Handlers finish: the backlog drains in order and the runner goes idle.
        r.gate.set()
        await settle()
        while r.tasks:
            await asyncio.gather(*list(r.tasks))
        assert r.running == 0 and r.queued == 0
        assert len(r.ran) == 4 + BACKLOG
        names = [ev.name for _, ev in r.ran if isinstance(ev, UserEvent)]
        assert names == [f"ev{i}" for i in range(4 + BACKLOG)]

    asyncio.run(main())


def test_a_query_that_expired_in_the_backlog_is_not_run() -> None:
    async def main() -> None:
        clock = FakeClock()
        counters: dict[str, int] = {}
        r = StuckRunner(parse_handlers({"user,query": "true"}), max_concurrent=1,
                        clock=clock, counters=counters)
        r.dispatch(UserEvent(1, "slow", b"", False))
        r.dispatch(query(2, clock.now() + 5.0))
        r.dispatch(query(3, clock.now() + 50.0))
        await settle()
        assert [ev.ltime for _, ev in r.ran] == [1]
        await clock.advance(10.0)  # the first query's deadline passes while it waits
        r.gate.set()
        while r.tasks:
            await asyncio.gather(*list(r.tasks))
        assert [ev.ltime for _, ev in r.ran] == [1, 3]
        assert counters == {"handler_query_expired": 1}

    asyncio.run(main())


def test_member_events_per_handler_are_bounded_and_stay_in_order() -> None:
    async def main() -> None:
        clock = FakeClock()
        counters: dict[str, int] = {}
        r = StuckRunner(parse_handlers({"member-join": "lb", "member-leave": "other"}),
                        max_concurrent=8, clock=clock, counters=counters)
        n = MEMBER_BACKLOG + 100
        for i in range(n):
            r.dispatch(MemberEvent(EventType.MEMBER_JOIN, (Member(f"m{i}", "10.0.0.1", 7946, {}),)))
        await settle()
        # One runs, MEMBER_BACKLOG wait; the oldest waiting ones were dropped.
        assert len(r.ran) == 1 and len(r.tasks) == 1
        assert r.pending_member_events() == MEMBER_BACKLOG
        assert counters["handler_member_backlog"] == n - 1 - MEMBER_BACKLOG
        r.gate.set()
        while r.tasks:
            await asyncio.gather(*list(r.tasks))
            await settle()
        ran = [ev.members[0].name for _, ev in r.ran if isinstance(ev, MemberEvent)]
        # The first one, then the latest MEMBER_BACKLOG, one after another, in order.
        assert ran == ["m0"] + [f"m{i}" for i in range(n - MEMBER_BACKLOG, n)]
        assert r.running == 0

    asyncio.run(main())


def test_member_chains_share_the_slots() -> None:
    async def main() -> None:
        counters: dict[str, int] = {}
        handlers = parse_handlers({f"member-join,user:h{i}": f"h{i}" for i in range(6)})
        r = StuckRunner(handlers, max_concurrent=2, clock=FakeClock(), counters=counters)
        for i in range(3):
            r.dispatch(MemberEvent(EventType.MEMBER_JOIN, (Member(f"m{i}", "10.0.0.1", 7946, {}),)))
        await settle()
        assert r.running == 2 and len(r.tasks) == 2
        r.gate.set()
        while r.tasks:
            await asyncio.gather(*list(r.tasks))
            await settle()
        assert len(r.ran) == 18 and r.running == 0 and counters == {}

    asyncio.run(main())


# ---------------------------------------------------------------------------------
# Coalescing: a batch never grows past its bound; nothing is lost, it goes out early.


class RecordingRunner:
    def __init__(self) -> None:
        self.events: list[AnyEvent] = []

    def dispatch(self, ev: AnyEvent) -> None:
        self.events.append(ev)


def test_coalescing_batches_are_flushed_early_when_full() -> None:
    async def main() -> None:
        runner = RecordingRunner()
        d = Dispatcher(FakeClock(), runner, [],  # type: ignore[arg-type]
                       member_coalescer=MemberCoalescer(max_pending=50),
                       user_coalescer=UserCoalescer(max_pending=50))
        for i in range(1000):  # distinct names: a peer's flood
            d.event(UserEvent(i, f"name{i}", b"", True))
            assert d._user._count < 50
        for i in range(1000):
            d.event(MemberEvent(EventType.MEMBER_JOIN, (Member(f"m{i}", "10.0.0.1", 7946, {}),)))
            assert len(d._member._latest) < 50
        for i in range(120):  # one name, one LTime, many payloads
            d.event(UserEvent(5000, "same", str(i).encode(), True))
            assert d._user._count < 50
        d.close()
        users = [e for e in runner.events if isinstance(e, UserEvent)]
        members = [m.name for e in runner.events if isinstance(e, MemberEvent) for m in e.members]
        assert len(users) == 1000 + 100  # full batches went out; 20 still wait for the timer
        assert members == [f"m{i}" for i in range(1000)]

    asyncio.run(main())


def test_member_coalescer_forgets_reaped_members_and_caps_its_memory() -> None:
    c = MemberCoalescer(max_delivered=100)
    t = 0.0
    for i in range(1000):
        c.add(MemberEvent(EventType.MEMBER_JOIN, (Member(f"m{i}", "10.0.0.1", 7946, {}),)), t)
        t += 10.0
        assert c.flush(t)
    assert len(c._delivered) == 100
    c.add(MemberEvent(EventType.MEMBER_REAP, (Member("m999", "10.0.0.1", 7946, {}),)), t)
    assert c.flush(t + 10.0)
    assert "m999" not in c._delivered and len(c._delivered) == 99
    # A repeated join for a remembered member is still skipped, as in Serf.
    c.add(MemberEvent(EventType.MEMBER_JOIN, (Member("m998", "10.0.0.1", 7946, {}),)), t + 20.0)
    assert c.flush(t + 30.0) == []
