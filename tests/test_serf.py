"""The Serf layer alone, over a fake memberlist: statuses, intents, clocks, push/pull."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from serfd.core.member import MemberStatus
from serfd.core.serf import MemberEvent, Serf, SerfConfig, SerfError, SerfState, UserEvent
from serfd.memberlist.broadcast import retransmit_limit
from serfd.memberlist.swim import MemberlistConfig
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
    """Records what Serf asks of memberlist; reports self as joined like the real one."""

    def __init__(self, config: Any, delegate: Serf, rng: random.Random, now: float) -> None:
        self.config = config
        self.delegate = delegate
        self.meta_updates = 0
        self.left = False
        self.sent: list[tuple[tuple[str, int], bytes]] = []
        delegate.notify_join(FakeNode(config.name, meta=delegate.node_meta(512)), now)

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
    assert s.memberlist.meta_updates == 1  # type: ignore[attr-defined]
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
    b.begin_join(ignore_old=True)
    b.merge_remote_state(state, True, 2.0)
    b.end_join(1, 2.0)
    assert [e for e in events(b) if isinstance(e, UserEvent)] == []
    # The join intent goes out once joined.
    assert any(isinstance(m, MessageJoin) and m.node == "b" for m in broadcasts(b))


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
    s.leave(1.0)
    assert s.state == SerfState.LEAVING
    # The intent must go out first: drain it past its retransmit limit.
    for _ in range(10):
        s.get_broadcasts(2, 1400)
    s.handle_timer(1.2)
    assert s.memberlist.left  # type: ignore[attr-defined]
    s.handle_timer(1.3)
    assert s.state == SerfState.LEAVING  # propagation delay still running
    s.handle_timer(2.5)
    assert s.state == SerfState.LEFT
    s.leave(3.0)  # leaving twice is harmless once left


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
    sent: list[float] = []
    assert s.force_leave("a", False, 3.0, on_sent=lambda: sent.append(3.0))
    rounds = 0
    while not sent:
        assert any(isinstance(m, MessageLeave) and m.node == "a" for m in broadcasts(s))
        rounds += 1
    # Reported once retransmitted its full budget (memberlist's limit for 3 members).
    assert rounds == retransmit_limit(s.config.memberlist.retransmit_mult, 3)
