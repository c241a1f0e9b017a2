"""serfd.core.coalesce and serfd.agent.dispatch.Dispatcher directly: Serf's coalescing rules
(what a batch keeps, what it skips, when it is due) with time passed in by hand.

The window timing through the events service is in test_events_service.py; the bounds
(MAX_PENDING, the forgetting of delivered members) are in test_handler_backlog.py.
"""

from __future__ import annotations

import asyncio

from serfd.agent.dispatch import Dispatcher
from serfd.core.coalesce import COALESCE_PERIOD, QUIESCENT_PERIOD, MemberCoalescer, UserCoalescer
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import IncomingQuery
from serfd.core.serf import EventType, MemberEvent, UserEvent
from serfd.testing.clock import FakeClock


def m(name: str, role: str = "") -> Member:
    return Member(name, "10.0.0.1", 7946, {"role": role} if role else {})


def ev(kind: EventType, *names: str) -> MemberEvent:
    return MemberEvent(kind, tuple(m(n) for n in names))


def test_a_member_batch_is_due_at_the_earlier_of_quiescence_and_the_period() -> None:
    c = MemberCoalescer()
    assert c.deadline() is None and c.flush(100.0) == []
    c.add(ev(EventType.MEMBER_JOIN, "a"), 10.0)
    assert c.deadline() == 10.0 + QUIESCENT_PERIOD
    c.add(ev(EventType.MEMBER_JOIN, "b"), 10.5)
    c.add(ev(EventType.MEMBER_JOIN, "c"), 11.25)
    c.add(ev(EventType.MEMBER_JOIN, "d"), 12.0)
    assert c.deadline() == 10.0 + COALESCE_PERIOD  # before 12.0 + QUIESCENT_PERIOD
    assert c.flush(12.5) == []  # not due yet
    assert c.flush(12.5, force=True) == [ev(EventType.MEMBER_JOIN, "a", "b", "c", "d")]
    assert c.deadline() is None


def test_member_events_keep_the_latest_type_per_member_grouped_by_type() -> None:
    c = MemberCoalescer()
    c.add(ev(EventType.MEMBER_JOIN, "a", "b", "c"), 0.0)
    c.add(ev(EventType.MEMBER_FAILED, "b"), 0.25)
    c.add(ev(EventType.MEMBER_LEAVE, "c"), 0.5)
    c.add(ev(EventType.MEMBER_JOIN, "c"), 0.75)  # c came back: its join is what counts
    out = c.flush(2.0)
    assert sorted(out, key=lambda e: e.type.value) == [
        ev(EventType.MEMBER_FAILED, "b"), ev(EventType.MEMBER_JOIN, "a", "c")]


def test_a_repeat_of_the_last_delivered_type_is_skipped_except_updates() -> None:
    c = MemberCoalescer()
    c.add(ev(EventType.MEMBER_JOIN, "a"), 0.0)
    c.add(MemberEvent(EventType.MEMBER_UPDATE, (m("b", "web"),)), 0.0)
    assert len(c.flush(5.0)) == 2
    c.add(ev(EventType.MEMBER_JOIN, "a"), 10.0)  # a join again (e.g. a push/pull replay)
    c.add(MemberEvent(EventType.MEMBER_UPDATE, (m("b", "db"),)), 10.0)
    assert c.flush(15.0) == [MemberEvent(EventType.MEMBER_UPDATE, (m("b", "db"),))]
    c.add(ev(EventType.MEMBER_FAILED, "a"), 20.0)
    c.add(ev(EventType.MEMBER_JOIN, "a"), 20.5)  # failed, then back: the join is news
    assert c.flush(25.0) == []  # ... but the last delivered for a was a join: skipped
    c.add(ev(EventType.MEMBER_FAILED, "a"), 30.0)
    assert c.flush(35.0) == [ev(EventType.MEMBER_FAILED, "a")]


def test_user_events_keep_every_event_at_the_highest_ltime_per_name() -> None:
    c = UserCoalescer()
    assert not c.handles(UserEvent(1, "x", b"", False))
    assert not c.handles(ev(EventType.MEMBER_JOIN, "a"))
    c.add(UserEvent(4, "deploy", b"a", True), 0.0)
    c.add(UserEvent(4, "deploy", b"b", True), 0.1)  # same LTime: both kept, as Serf does
    c.add(UserEvent(3, "deploy", b"old", True), 0.2)
    c.add(UserEvent(1, "other", b"", True), 0.3)
    assert c.flush(0.5) == []
    assert sorted(c.flush(2.0), key=lambda e: (e.name, e.payload)) == [
        UserEvent(4, "deploy", b"a", True), UserEvent(4, "deploy", b"b", True),
        UserEvent(1, "other", b"", True)]
    c.add(UserEvent(5, "deploy", b"c", True), 3.0)
    c.add(UserEvent(6, "deploy", b"d", True), 3.0)
    assert c.flush(10.0) == [UserEvent(6, "deploy", b"d", True)]


class Recorder:
    def __init__(self) -> None:
        self.events: list[AnyEvent] = []

    def dispatch(self, ev: AnyEvent) -> None:
        self.events.append(ev)


def test_the_dispatcher_arms_one_timer_for_the_earliest_batch_and_delivers_in_order() -> None:
    async def main() -> None:
        clock = FakeClock(start=0.0)
        runner = Recorder()
        heard: list[AnyEvent] = []
        d = Dispatcher(clock, runner, [heard.append])  # type: ignore[arg-type]
        d.event(ev(EventType.MEMBER_JOIN, "a"))
        assert clock.next_deadline() == QUIESCENT_PERIOD
        await clock.advance(0.5)
        d.event(ev(EventType.MEMBER_JOIN, "b"))  # the batch is due later now: re-armed
        await clock.advance(0.25)
        d.event(UserEvent(1, "deploy", b"", True))
        assert clock.next_deadline() == 0.5 + QUIESCENT_PERIOD  # the member batch's
        assert clock.pending() == 1  # one timer for both coalescers
        q = IncomingQuery(ltime=1, id=1, name="q", payload=b"", source_node="a", deadline=9.0)
        d.event(q)  # straight through
        assert runner.events == heard == [q]
        await clock.advance(0.75)  # the member batch is due
        assert runner.events == [q, ev(EventType.MEMBER_JOIN, "a", "b")]
        assert clock.next_deadline() == 0.75 + QUIESCENT_PERIOD
        await clock.advance(0.25)  # the user batch
        assert runner.events == heard == [q, ev(EventType.MEMBER_JOIN, "a", "b"),
                                          UserEvent(1, "deploy", b"", True)]
        assert clock.pending() == 0
        d.event(ev(EventType.MEMBER_LEAVE, "a"))
        d.close()  # disarmed: the batch is not delivered
        assert clock.pending() == 0

    asyncio.run(main())


def test_without_coalescing_everything_goes_straight_through() -> None:
    async def main() -> None:
        clock = FakeClock(start=0.0)
        runner = Recorder()
        d = Dispatcher(clock, runner, [], coalesce=False)  # type: ignore[arg-type]
        events: list[AnyEvent] = [ev(EventType.MEMBER_JOIN, "a"), ev(EventType.MEMBER_JOIN, "a"),
                                  UserEvent(1, "deploy", b"", True)]
        for e in events:
            d.event(e)
        assert runner.events == events and clock.pending() == 0

    asyncio.run(main())
