"""The Serf layer alone, over a fake memberlist: statuses, intents, clocks, push/pull."""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from serfd.core.member import MemberStatus
from serfd.core.query import QueryParam
from serfd.core.serf import (
    ForceLeaveDone,
    JoinDone,
    JoinError,
    LeaveDone,
    MemberEvent,
    QueryRecordEvent,
    Serf,
    SerfConfig,
    SerfError,
    SerfState,
    UserEvent,
)
from serfd.memberlist.broadcast import retransmit_limit
from serfd.memberlist.swim import MemberlistConfig, ProtocolError, StreamKind
from serfd.wire.messages import ErrResp
from serfd.wire.serf_messages import (
    MessageJoin,
    MessageLeave,
    MessagePushPull,
    MessageUserEvent,
    decode_serf_message,
    decode_tags,
    encode_tags,
)


@dataclass
class FakeNode:
    name: str
    addr: str = "127.0.0.9"
    port: int = 7946
    meta: bytes = field(default_factory=lambda: encode_tags({"role": "web"}))
    vsn: bytes = bytes([1, 5, 2, 2, 5, 5])


class FakeMemberlist:
    """Records what Serf asks of memberlist; reports self as joined like the real one.
    ``FakeMemberlist.of[serf]`` is the one a Serf made (its memberlist is private)."""

    of: ClassVar[weakref.WeakKeyDictionary[Serf, FakeMemberlist]] = weakref.WeakKeyDictionary()

    def __init__(self, config: Any, delegate: Serf, rng: random.Random, now: float) -> None:
        self.config = config
        self.delegate = delegate
        self.meta_updates = 0
        self.left = False
        self.sent: list[tuple[tuple[str, int], bytes]] = []
        self.joins: list[tuple[int, tuple[str, int], StreamKind]] = []
        self.counters: dict[str, int] = {}
        self.activity: dict[str, int] = {}
        self.fresh = 0  # fresh_broadcast calls: news Serf asked to be gossiped eagerly
        self.queued_at = 0.0  # the latest delegate_queued(now)
        FakeMemberlist.of[delegate] = self
        delegate.notify_join(FakeNode(config.name, meta=delegate.node_meta(512)), now)

    def start_join(self, addr: tuple[str, int], now: float, kind: StreamKind) -> int:
        token = 100 + len(self.joins)
        self.joins.append((token, addr, kind))
        return token

    def merge_push_pull(self, plain: bytes, join: bool, now: float) -> None:
        # The fake's "push/pull" is Serf's own state alone.
        if plain == b"refuse":
            raise ProtocolError("incompatible protocol")
        self.delegate.merge_remote_state(plain, join, now)

    def stream_outcome(self, token: int, reply: bytes | None, now: float,
                       error: str = "") -> None:
        pass

    def num_alive(self) -> int:
        return 1

    def update_meta(self, now: float) -> None:
        self.meta_updates += 1

    def leave(self, now: float) -> None:
        self.left = True

    def leave_broadcast_done(self) -> bool:
        return self.left

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def health_score(self) -> int:
        return 0

    def send_user_msg(self, addr: tuple[str, int], data: bytes) -> None:
        self.sent.append((addr, data))

    def fresh_broadcast(self) -> None:
        self.fresh += 1

    def delegate_queued(self, now: float) -> None:
        self.queued_at = now


def make_serf(name: str = "me", tags: dict[str, str] | None = None) -> Serf:
    mlc = MemberlistConfig.from_profile("lan", name=name)
    cfg = SerfConfig(node_name=name, memberlist=mlc, tags=tags or {"role": "db"})
    return Serf(cfg, random.Random(1), 0.0, memberlist_factory=FakeMemberlist)


def events(s: Serf) -> list[Any]:
    return list(s.drain_events())


def status(s: Serf, name: str) -> MemberStatus:
    return {m.name: m.status for m in s.members()}[name]


def broadcasts(s: Serf) -> list[Any]:
    return [decode_serf_message(b) for b in s.get_broadcasts(2, 1400)]


def test_self_is_alive_member_with_tags() -> None:
    s = make_serf(tags={"role": "db", "dc": "x"})
    [me] = s.members()
    assert me.name == "me" and me.status == MemberStatus.ALIVE
    assert me.tags == {"role": "db", "dc": "x"}
    assert decode_tags(s.node_meta(512)) == {"role": "db", "dc": "x"}
    [ev] = events(s)
    assert isinstance(ev, MemberEvent) and ev.type == "member-join"


def test_failed_then_left_by_force_leave() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 1.0)
    s.notify_leave(FakeNode("a"), 2.0)
    assert status(s, "a") == MemberStatus.FAILED
    events(s)
    s.force_leave("a", False, 3.0)
    assert status(s, "a") == MemberStatus.LEFT
    assert [e.type for e in events(s)] == ["member-leave"]


def test_graceful_leave_intent_before_dead_means_left() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 1.0)
    s.notify_msg(MessageLeave(ltime=5, node="a").encode(), 1.5)
    assert status(s, "a") == MemberStatus.LEAVING
    s.notify_leave(FakeNode("a"), 2.0)
    assert status(s, "a") == MemberStatus.LEFT
    # The accepted intent is re-gossiped byte for byte.
    assert MessageLeave(ltime=5, node="a") in broadcasts(s)


def test_stale_intent_is_ignored_and_not_rebroadcast() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 1.0)
    s.notify_msg(MessageJoin(ltime=10, node="a").encode(), 1.0)
    for _ in range(20):  # send the accepted intent past its retransmit limit
        s.get_broadcasts(2, 1400)
    s.notify_msg(MessageLeave(ltime=9, node="a").encode(), 1.0)
    assert status(s, "a") == MemberStatus.ALIVE
    assert broadcasts(s) == []
    assert s.clock.time() == 11  # witnessed 10


def test_leave_intent_about_ourselves_is_refuted_with_join() -> None:
    s = make_serf()
    s.notify_msg(MessageLeave(ltime=7, node="me").encode(), 1.0)
    assert status(s, "me") == MemberStatus.ALIVE
    b = broadcasts(s)
    assert any(isinstance(m, MessageJoin) and m.node == "me" and m.ltime >= 8 for m in b)


def test_intent_for_unknown_node_is_buffered_then_applied() -> None:
    s = make_serf()
    s.notify_msg(MessageLeave(ltime=4, node="ghost").encode(), 1.0)
    s.notify_join(FakeNode("ghost"), 2.0)
    assert status(s, "ghost") == MemberStatus.LEAVING


def test_tags_update_event_and_meta() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 1.0)
    events(s)
    s.notify_update(FakeNode("a", meta=encode_tags({"role": "lb"})), 2.0)
    [ev] = events(s)
    assert ev.type == "member-update" and ev.members[0].tags == {"role": "lb"}
    s.set_tags({"role": "cache"}, 3.0)
    assert FakeMemberlist.of[s].meta_updates == 1
    with pytest.raises(SerfError, match="exceeds limit of 512"):
        s.set_tags({"k": "v" * 600}, 4.0)


def test_old_style_meta_is_role() -> None:
    s = make_serf()
    s.notify_join(FakeNode("old", meta=b"web"), 1.0)
    assert {m.name: m.tags for m in s.members()}["old"] == {"role": "web"}


def test_push_pull_round_trip_merges_left_and_clocks() -> None:
    a = make_serf("a")
    a.notify_join(FakeNode("x"), 1.0)
    a.notify_leave(FakeNode("x"), 2.0)
    a.force_leave("x", False, 3.0)
    a.notify_msg(MessageUserEvent(ltime=3, name="deploy", payload=b"v1").encode(), 3.0)
    state = a.local_state(False)
    pp = MessagePushPull.from_body(state[1:])
    assert pp.left_members == ("x",)
    assert len(pp.events) == 512

    b = make_serf("b")
    b.notify_join(FakeNode("x"), 1.0)
    b.merge_remote_state(state, False, 4.0)
    assert b.clock.time() >= a.clock.time()
    assert status(b, "x") == MemberStatus.LEAVING  # alive + leave intent
    evs = [e for e in events(b) if isinstance(e, UserEvent)]
    assert [(e.name, e.payload) for e in evs] == [("deploy", b"v1")]


def test_join_with_ignore_old_skips_old_events() -> None:
    a = make_serf("a")
    for lt in range(1, 5):
        a.notify_msg(MessageUserEvent(ltime=lt, name="e", payload=bytes([lt])).encode(), 1.0)
    state = a.local_state(True)
    b = make_serf("b")
    join_id = b.join([("10.0.0.1", 7946)], True, 2.0)
    [(token, addr, kind)] = FakeMemberlist.of[b].joins
    assert addr == ("10.0.0.1", 7946) and kind is StreamKind.JOIN
    assert not any(isinstance(m, MessageJoin) for m in broadcasts(b))  # not joined yet
    b.stream_outcome(token, state, 2.0)
    evs = events(b)
    assert [e for e in evs if isinstance(e, UserEvent)] == []
    assert JoinDone(join_id, 1, ()) in evs
    # The join intent goes out once joined.
    assert any(isinstance(m, MessageJoin) and m.node == "b" for m in broadcasts(b))
    # Without ignore_old, the same state replays the events.
    c = make_serf("c")
    c.join([("10.0.0.1", 7946)], False, 2.0)
    c.stream_outcome(FakeMemberlist.of[c].joins[0][0], state, 2.0)
    assert len([e for e in events(c) if isinstance(e, UserEvent)]) == 4


def test_join_done_reports_each_address_in_order_with_its_reason() -> None:
    s = make_serf()
    addrs = [("10.0.0.1", 7946), ("10.0.0.2", 7946), ("10.0.0.3", 7946), ("10.0.0.4", 7946)]
    join_id = s.join(addrs, False, 1.0)
    t1, t2, t3, t4 = (t for t, _, _ in FakeMemberlist.of[s].joins)
    events(s)
    # Outcomes in any order; the event waits for the last and lists failures in order.
    s.stream_outcome(t3, ErrResp(error="No installed keys could decrypt the message")
                     .encode(), 1.1)
    s.stream_outcome(t1, None, 1.2, "dial tcp 10.0.0.1:7946: connect: connection refused")
    s.stream_outcome(t4, b"refuse", 1.3)
    assert not [e for e in events(s) if isinstance(e, JoinDone)]
    s.stream_outcome(t2, make_serf("x").local_state(True), 1.4)
    [done] = [e for e in events(s) if isinstance(e, JoinDone)]
    assert done == JoinDone(join_id, 1, (
        JoinError(addrs[0], "dial tcp 10.0.0.1:7946: connect: connection refused"),
        JoinError(addrs[2], "remote error: No installed keys could decrypt the message"),
        JoinError(addrs[3], "incompatible protocol")))
    assert str(done.errors[0]) == ("Failed to join 10.0.0.1: dial tcp 10.0.0.1:7946: "
                                   "connect: connection refused")
    assert any(isinstance(m, MessageJoin) and m.node == "me" for m in broadcasts(s))


def test_a_join_that_reaches_nobody_sends_no_intent_and_an_empty_one_ends_at_once() -> None:
    s = make_serf()
    join_id = s.join([("10.0.0.1", 7946)], False, 1.0)
    s.stream_outcome(FakeMemberlist.of[s].joins[0][0], None, 1.5)
    assert [e for e in events(s) if isinstance(e, JoinDone)] == [
        JoinDone(join_id, 0, (JoinError(("10.0.0.1", 7946), "no reply"),))]
    assert broadcasts(s) == []
    empty = s.join([], False, 2.0)
    assert [e for e in events(s) if isinstance(e, JoinDone)] == [JoinDone(empty, 0, ())]
    s.shutdown()
    with pytest.raises(SerfError, match=r"^Serf can't Join after Leave or Shutdown$"):
        s.join([("10.0.0.1", 7946)], False, 3.0)


def test_user_event_dedup() -> None:
    s = make_serf()
    raw = MessageUserEvent(ltime=2, name="e", payload=b"p").encode()
    s.notify_msg(raw, 1.0)
    s.notify_msg(raw, 1.1)
    assert len([e for e in events(s) if isinstance(e, UserEvent)]) == 1
    assert broadcasts(s) == [MessageUserEvent(ltime=2, name="e", payload=b"p")]


def test_graceful_leave_phases() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 0.0)
    events(s)
    s.leave(1.0)
    assert s.state == SerfState.LEAVING
    with pytest.raises(SerfError, match=r"^Leave already in progress$"):
        s.leave(1.0)
    # The intent must go out first: drain it past its retransmit limit.
    for _ in range(10):
        s.get_broadcasts(2, 1400)
    s.handle_timer(1.2)
    assert FakeMemberlist.of[s].left
    s.handle_timer(1.3)
    assert s.state == SerfState.LEAVING  # propagation delay still running
    assert events(s) == []
    s.handle_timer(2.5)
    assert s.state == SerfState.LEFT
    assert events(s) == [LeaveDone("")]
    s.leave(3.0)  # leaving twice is harmless once left
    assert events(s) == [LeaveDone("")]


def test_leave_done_says_why_a_leave_was_cut_short() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 0.0)
    s.leave(1.0)  # nobody takes the intent off the queue
    due = s.get_timer()
    assert due is not None and due <= 1.0 + s.config.broadcast_timeout
    s.handle_timer(1.0 + s.config.broadcast_timeout)
    s.handle_timer(1.0 + s.config.broadcast_timeout + s.config.leave_propagate_delay)
    assert [e for e in events(s) if isinstance(e, LeaveDone)] == [
        LeaveDone("timeout while waiting for graceful leave")]


def test_a_leave_with_nobody_to_tell_needs_only_the_propagation_delay() -> None:
    s = make_serf()
    events(s)
    s.leave(1.0)
    assert s.get_timer() == 1.0 + s.config.leave_propagate_delay
    s.handle_timer(1.0 + s.config.leave_propagate_delay)
    assert events(s) == [LeaveDone("")] and s.state == SerfState.LEFT


def test_garbage_serf_messages_are_counted() -> None:
    s = make_serf()
    for junk in (b"\x00", b"\x01\xc1", b"\x03\x93\x01\x02", b"\x63abc", b"\x02garbage"):
        s.notify_msg(junk, 1.0)
    s.merge_remote_state(b"\x02\xff\xff", False, 1.0)
    s.merge_remote_state(b"", False, 1.0)
    assert sum(s.counters.values()) >= 6
    assert [m.name for m in s.members()] == ["me"]


def test_reap_failed_after_reconnect_timeout() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 0.0)
    s.notify_leave(FakeNode("a"), 1.0)
    events(s)
    s.handle_timer(16.0)
    assert "a" in [m.name for m in s.members()]
    s.handle_timer(1.0 + 24 * 3600 + 16)
    assert "a" not in [m.name for m in s.members()]
    assert [e.type for e in events(s)] == ["member-reap"]


def test_force_leave_reports_when_its_own_broadcast_has_gone_out() -> None:
    s = make_serf()
    for n in ("a", "b"):
        s.notify_join(FakeNode(n), 1.0)
    s.notify_leave(FakeNode("a"), 2.0)
    events(s)
    op_id = s.force_leave("a", False, 3.0)
    assert op_id is not None
    rounds = 0
    while not (done := [e for e in events(s) if isinstance(e, ForceLeaveDone)]):
        assert any(isinstance(m, MessageLeave) and m.node == "a" for m in broadcasts(s))
        rounds += 1
    assert done == [ForceLeaveDone(op_id)]
    # Reported once retransmitted its full budget (memberlist's limit for 3 members).
    assert rounds == retransmit_limit(s.config.memberlist.retransmit_mult, 3)


def test_force_leave_with_nobody_to_tell_has_nothing_to_wait_for() -> None:
    s = make_serf()
    s.notify_join(FakeNode("a"), 1.0)
    s.notify_leave(FakeNode("a"), 2.0)
    assert s.force_leave("a", False, 3.0) is None
    assert status(s, "a") == MemberStatus.LEFT


def test_query_records_are_events_with_the_query_id_even_if_it_ends_as_it_starts() -> None:
    s = make_serf()
    events(s)
    # Alone, our own ack answers a ping in full before query() returns.
    qid = s.query("_serf_ping", b"", QueryParam(request_ack=True), 1.0)
    assert [(e.query_id, e.record.type, e.record.from_) for e in events(s)
            if isinstance(e, QueryRecordEvent)] == [(qid, "ack", "me"), (qid, "done", "")]
    assert s.pending_query_count() == 0
    other = s.query("q", b"", QueryParam(timeout=2.0), 1.0)
    assert other != qid
    assert not [e for e in events(s) if isinstance(e, QueryRecordEvent)]  # nobody answered
    s.handle_timer(3.0)
    assert [(e.query_id, e.record.type) for e in events(s)] == [(other, "done")]


def test_a_join_stream_the_driver_never_reports_fails_at_the_next_reap() -> None:
    s = make_serf()
    join_id = s.join([("10.0.0.1", 7946)], False, 1.0)
    events(s)
    s.handle_timer(16.0)  # the first reap: the request (TCPTimeout 10 s) is past due
    assert [e for e in events(s) if isinstance(e, JoinDone)] == [
        JoinDone(join_id, 0, (JoinError(("10.0.0.1", 7946), "i/o timeout"),))]
    assert s.counters["join_stream_lost"] == 1
    s.stream_outcome(FakeMemberlist.of[s].joins[0][0], b"late", 17.0)  # ignored now
    assert events(s) == []
