"""A hostile peer cannot make the Serf layer keep, or send, more than its bounds allow.

Two parts: one focused test per bound (each fails without its cap), then a Hypothesis
state machine that throws random peer messages, extreme timeouts and relay factors
included, at one pure Serf over a real memberlist core and checks every bounded
structure after each step.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from serfd.core.lamport import MAX_LTIME
from serfd.core.query import IncomingQuery, PendingQuery, QueryParam, QueryRecord
from serfd.core.serf import (
    DEFAULT_MAX_QUERY_TIMEOUT,
    ENTRY_OVERHEAD,
    MemberEvent,
    QueryRecordEvent,
    Serf,
    SerfConfig,
    SerfError,
    UserEvent,
)
from serfd.memberlist.swim import Memberlist, MemberlistConfig
from serfd.wire.codec import pack_gossip
from serfd.wire.framing import encode_push_pull
from serfd.wire.messages import Alive, IndirectPing, MsgType, ip_to_bytes
from serfd.wire.packet import encode_packet
from serfd.wire.serf_messages import (
    QUERY_FLAG_ACK,
    MessageJoin,
    MessageLeave,
    MessagePushPull,
    MessageQuery,
    MessageQueryResponse,
    MessageUserEvent,
    SerfMsgType,
    UserEventRecord,
    UserEvents,
)
from tests.test_serf import FakeMemberlist, FakeNode

HOUR_NS = 3600 * 10**9
MAX_NS = 2**63 - 1  # the largest Go time.Duration


def make_serf(name: str = "me", **overrides: Any) -> Serf:
    mlc = MemberlistConfig.from_profile("lan", name=name)
    cfg = SerfConfig(node_name=name, memberlist=mlc, tags={"role": "db"}, **overrides)
    return Serf(cfg, random.Random(1), 0.0, memberlist_factory=FakeMemberlist)


def add_members(s: Serf, n: int, now: float = 0.0) -> None:
    for i in range(n):
        s.notify_join(FakeNode(f"m{i}", addr=f"10.0.{i // 250}.{i % 250 + 1}"), now)
    list(s.drain_events())


def query(ltime: int, qid: int = 1, timeout: int = HOUR_NS, relay: int = 0, flags: int = 0,
          name: str = "q", source: str = "m0", addr: str = "10.0.0.1") -> bytes:
    return MessageQuery(ltime=ltime, id=qid, addr=ip_to_bytes(addr), port=7946,
                        source_node=source, filters=None, flags=flags, relay_factor=relay,
                        timeout=timeout, name=name, payload=None).encode()


def sent(s: Serf) -> list[tuple[tuple[str, int], bytes]]:
    ml = FakeMemberlist.of[s]
    out: list[tuple[tuple[str, int], bytes]] = ml.sent
    ml.sent = []
    return out


def relays(out: list[tuple[tuple[str, int], bytes]]) -> int:
    return sum(1 for _, data in out if data[:1] == bytes((SerfMsgType.RELAY,)))


# ---------------------------------------------------------------------------- answering


def test_a_peer_query_timeout_is_capped_and_its_state_expires() -> None:
    s = make_serf()
    add_members(s, 3)
    s.notify_msg(query(5, timeout=MAX_NS), 10.0)
    [q] = [e for e in s.drain_events() if isinstance(e, IncomingQuery)]
    cap = s.config.max_query_timeout
    assert q.deadline == 10.0 + cap
    assert s.counters["query_timeout_capped"] == 1
    s.notify_msg(query(6, timeout=1000 * HOUR_NS), 10.0)
    assert all(a.deadline <= 10.0 + cap for a in s._answering.values())
    due = s.get_timer()
    assert due is not None and due <= 10.0 + cap
    s.handle_timer(10.0 + cap)
    assert not s._answering
    with pytest.raises(SerfError, match="past the deadline"):
        s.respond(q, b"late", 10.0 + cap + 1)


def test_normal_query_timeout_is_kept_as_sent() -> None:
    s = make_serf()
    s.notify_msg(query(5, timeout=7 * 10**9), 1.0)
    [q] = [e for e in s.drain_events() if isinstance(e, IncomingQuery)]
    assert q.deadline == 8.0
    assert "query_timeout_capped" not in s.counters


def test_queries_answered_at_once_are_capped_oldest_first(
        caplog: pytest.LogCaptureFixture) -> None:
    s = make_serf(max_answering=16)
    with caplog.at_level(logging.WARNING, "serfd.serf"):
        for i in range(50):
            s.notify_msg(query(10 + i, qid=i, timeout=1000 * HOUR_NS), 1.0)
    assert len(s._answering) == 16
    assert s.counters["answering_full"] == 34
    # The newest are the ones kept; an evicted one cannot be answered any more.
    assert set(s._answering) == {(10 + i, i) for i in range(34, 50)}
    qs = [e for e in s.drain_events() if isinstance(e, IncomingQuery)]
    with pytest.raises(SerfError, match="dropped"):
        s.respond(qs[0], b"x", 2.0)
    s.respond(qs[-1], b"x", 2.0)
    assert sum("forgetting the oldest" in r.getMessage() for r in caplog.records) == 1


def test_relay_factor_is_capped() -> None:
    s = make_serf()
    add_members(s, 300)  # enough members that an uncapped 255 would be honoured
    sent(s)
    s.notify_msg(query(5, relay=255, flags=QUERY_FLAG_ACK), 1.0)
    out = sent(s)
    assert relays(out) == s.config.max_relay_factor == 5
    assert s.counters["query_relay_factor_capped"] == 1
    [q] = [e for e in s.drain_events() if isinstance(e, IncomingQuery)]
    s.respond(q, b"answer", 1.5)
    assert relays(sent(s)) == 5


def test_small_relay_factor_is_honoured() -> None:
    s = make_serf()
    add_members(s, 10)
    sent(s)
    s.notify_msg(query(5, relay=3, flags=QUERY_FLAG_ACK), 1.0)
    assert relays(sent(s)) == 3
    assert "query_relay_factor_capped" not in s.counters


# ---------------------------------------------------------------------------- asking


def test_open_queries_are_capped_with_an_error() -> None:
    s = make_serf(max_asking=4)
    for _ in range(4):
        s.query("q", b"", QueryParam(timeout=5.0), 1.0)
    with pytest.raises(SerfError, match="too many queries in progress"):
        s.query("q", b"", QueryParam(timeout=5.0), 1.0)
    assert s.counters["asking_full"] == 1
    s.handle_timer(6.0)  # they time out: room again
    s.query("q", b"", QueryParam(timeout=5.0), 7.0)


def test_asked_relay_factor_outside_a_uint8_is_an_error() -> None:
    s = make_serf()
    for bad in (256, -1):
        with pytest.raises(SerfError, match="between 0 and 255"):
            s.query("q", b"", QueryParam(timeout=1.0, relay_factor=bad), 1.0)
    assert not s._asking
    s.query("q", b"", QueryParam(timeout=1.0, relay_factor=255), 1.0)  # peers cap it


def test_asked_timeout_over_the_maximum_is_an_error() -> None:
    s = make_serf()
    with pytest.raises(SerfError, match="exceeds the maximum"):
        s.query("q", b"", QueryParam(timeout=1000 * 3600.0), 1.0)
    s.query("q", b"", QueryParam(timeout=s.config.max_query_timeout), 1.0)


def _asked(s: Serf) -> PendingQuery:
    # White box: the one query Serf is asking, to forge answers to it.
    [pq] = s._asking.values()
    return pq


def _records(s: Serf, query_id: int) -> list[QueryRecord]:
    return [e.record for e in s.drain_events()
            if isinstance(e, QueryRecordEvent) and e.query_id == query_id]


def _respond_many(s: Serf, pq: PendingQuery, n: int, payload: bytes, flags: int = 0) -> None:
    for i in range(n):
        resp = MessageQueryResponse(ltime=pq.ltime, id=pq.id, from_=f"forged-{i}",
                                    flags=flags, payload=payload or None)
        s.notify_msg(resp.encode(), 2.0)


def test_answers_to_one_query_are_capped_in_count() -> None:
    s = make_serf(max_query_answers=100)
    qid = s.query("q", b"", QueryParam(timeout=60.0, request_ack=True), 1.0)
    pq = _asked(s)
    _respond_many(s, pq, 5000, b"")
    _respond_many(s, pq, 5000, b"", flags=QUERY_FLAG_ACK)
    assert len(pq.responses) == 100 and len(pq.acks) == 100
    assert len(_records(s, qid)) == 200
    assert "me" in pq.acks  # our own ack took one of the places
    assert s.counters["query_answers_cut"] == 10_000 - 199


def test_answers_to_one_query_are_capped_in_bytes() -> None:
    s = make_serf(max_query_answer_bytes=64 * 1024)
    qid = s.query("q", b"", QueryParam(timeout=60.0), 1.0)
    pq = _asked(s)
    _respond_many(s, pq, 200, b"x" * 4000)
    kept = _records(s, qid)
    assert pq.used_bytes <= 64 * 1024
    assert sum(len(r.payload) for r in kept) <= 64 * 1024
    assert len(kept) == 16 and s.counters["query_answers_cut"] == 184


def test_answer_limits_grow_with_the_cluster() -> None:
    s = make_serf(max_query_answers=10, max_query_answer_bytes=1000)
    add_members(s, 50)
    s.query("q", b"", QueryParam(timeout=60.0), 1.0)
    pq = _asked(s)
    assert pq.max_answers == 4 * 51
    assert pq.max_bytes == 2 * 51 * s.config.query_response_size_limit


# ---------------------------------------------------------------------------- dedup rings


def test_query_ids_at_one_ltime_are_capped() -> None:
    s = make_serf()
    for i in range(1000):
        s.notify_msg(query(7, qid=i), 1.0)
    slot = s._query_buffer[7 % len(s._query_buffer)]
    assert slot is not None and len(slot[1]) == s.config.max_query_ids_per_ltime
    assert s.counters["query_ids_per_ltime"] == 1000 - s.config.max_query_ids_per_ltime
    assert len(s._query_q) <= s.config.max_query_ids_per_ltime  # dropped ones not re-gossiped


def test_user_events_at_one_ltime_are_capped() -> None:
    s = make_serf()
    for i in range(2000):
        s.notify_msg(MessageUserEvent(ltime=9, name=f"e{i}", payload=None, cc=False).encode(), 1.0)
    slot = s._event_buffer[9 % len(s._event_buffer)]
    assert slot is not None and len(slot.events) == s.config.max_events_per_ltime
    assert s.counters["user_events_per_ltime"] == 2000 - s.config.max_events_per_ltime


def test_event_buffer_bytes_are_capped() -> None:
    s = make_serf(max_event_buffer_bytes=100_000)
    payload = b"p" * 8000
    for lt in range(1, 200):
        s.notify_msg(MessageUserEvent(ltime=lt, name="big", payload=payload, cc=False).encode(),
                     1.0)
    total = sum(len(r.payload or b"") for slot in s._event_buffer if slot for r in slot.events)
    assert total <= 100_000
    assert s.counters["event_buffer_full"] > 0
    # Our push/pull state carries the ring: it stays within the budget too.
    assert len(s.local_state(False)) < 110_000


def test_event_ring_budget_frees_overwritten_slots() -> None:
    s = make_serf(event_buffer=8, max_event_buffer_bytes=8 * (100 + ENTRY_OVERHEAD + 2))
    for lt in range(1, 100):
        s.notify_msg(MessageUserEvent(ltime=lt, name="e", payload=b"x" * 100, cc=False).encode(),
                     1.0)
    assert "event_buffer_full" not in s.counters  # one per slot always fits
    assert len([e for e in s.drain_events() if not isinstance(e, MemberEvent)]) == 99


def test_a_user_event_over_serfs_hard_limit_is_dropped() -> None:
    s = make_serf()
    s.notify_msg(MessageUserEvent(ltime=3, name="huge", payload=b"x" * 10_000,
                                  cc=False).encode(), 1.0)
    assert s.counters["user_event_too_large"] == 1
    assert not [e for e in s.drain_events() if not isinstance(e, MemberEvent)]


def test_a_serf_message_over_the_size_limit_is_dropped() -> None:
    s = make_serf(max_message_size=4096)
    s.notify_msg(query(3, name="x" * 5000), 1.0)
    assert s.counters["serf_message_too_large"] == 1
    assert not s._answering


def test_old_event_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    s = make_serf()
    s.event_clock.witness(5000)
    with caplog.at_level(logging.WARNING, "serfd.serf"):
        for i in range(100):
            s.notify_msg(MessageUserEvent(ltime=10, name=f"old{i}", payload=None,
                                          cc=False).encode(), 1.0)
    assert s.counters["event_too_old"] == 100
    assert sum("received old event" in r.getMessage() for r in caplog.records) == 1


def test_a_peer_ltime_at_the_uint64_limit_keeps_us_working() -> None:
    s = make_serf()
    add_members(s, 2)
    s.notify_msg(MessageUserEvent(ltime=MAX_LTIME, name="e", payload=None, cc=False).encode(),
                 1.0)
    s.notify_msg(MessageJoin(ltime=MAX_LTIME, node="m1").encode(), 1.0)
    s.notify_msg(query(MAX_LTIME), 1.0)
    assert s.event_clock.time() == s.clock.time() == s.query_clock.time() == MAX_LTIME
    MessagePushPull.from_body(s.local_state(False)[1:])  # still encodes
    s.user_event("mine", b"", False, 2.0)
    s.query("mine", b"", QueryParam(timeout=1.0), 2.0)
    assert s.event_clock.time() == MAX_LTIME


# ---------------------------------------------------------------------------- intents, prunes


def test_intents_for_unknown_nodes_are_capped_in_count() -> None:
    s = make_serf(max_intents=100)
    for i in range(1000):
        s.notify_msg(MessageJoin(ltime=5, node=f"ghost{i}").encode(), float(i) / 100)
    assert len(s._intents) == 100
    assert set(s._intents) == {f"ghost{i}" for i in range(900, 1000)}  # the newest
    assert s.counters["intents_full"] == 900


def test_intents_for_unknown_nodes_are_capped_in_bytes() -> None:
    s = make_serf(max_intent_bytes=50_000)
    for i in range(100):
        s.notify_msg(MessageLeave(ltime=5, node=f"{i}-" + "n" * 10_000).encode(), 1.0)
    assert sum(len(n) for n in s._intents) <= 50_000
    assert s.counters["intents_full"] > 0


def test_intents_expire_after_the_recent_intent_timeout() -> None:
    s = make_serf()
    s.notify_msg(MessageJoin(ltime=5, node="ghost").encode(), 1.0)
    s.handle_timer(1.0 + s.config.recent_intent_timeout + s.config.reap_interval + 1)
    assert not s._intents and s._intent_bytes == 0


def test_repeated_prune_leaves_keep_one_entry_per_member() -> None:
    s = make_serf()
    add_members(s, 2)
    for lt in range(10, 1010):
        s.notify_msg(MessageLeave(ltime=lt, node="m1", prune=True).encode(), 1.0)
    assert s._prunes == {"m1": 1.0 + s.config.broadcast_timeout + s.config.leave_propagate_delay}
    s.handle_timer(1.0 + s.config.broadcast_timeout + s.config.leave_propagate_delay)
    assert not s._prunes and "m1" not in {m.name for m in s.members()}


# ---------------------------------------------------------------------------- queues, relays


def test_undrained_user_events_and_queries_are_capped() -> None:
    s = make_serf(max_pending_events=50)
    list(s.drain_events())
    for lt in range(1, 101):
        s.notify_msg(MessageUserEvent(ltime=lt, name="e", payload=None, cc=False).encode(), 1.0)
    s.notify_msg(query(3), 1.0)
    assert len(s._events) == 50
    assert s.counters["event_queue_full"] == 51
    assert len(list(s.drain_events())) == 50
    s.notify_msg(MessageUserEvent(ltime=200, name="e", payload=None, cc=False).encode(), 1.0)
    assert len(list(s.drain_events())) == 1  # room again once drained


def test_member_events_are_not_cut_by_the_event_cap() -> None:
    s = make_serf(max_pending_events=5)
    add_members(s, 0)
    for i in range(20):
        s.notify_join(FakeNode(f"x{i}"), 1.0)
    assert sum(isinstance(e, MemberEvent) for e in s.drain_events()) == 20


def test_broadcast_queues_are_pruned_at_max_depth() -> None:
    s = make_serf(max_queue_depth=100)
    for lt in range(1, 400):
        s.notify_msg(MessageUserEvent(ltime=lt, name="e", payload=None, cc=False).encode(), 1.0)
        s.notify_msg(MessageJoin(ltime=lt, node=f"ghost{lt}").encode(), 1.0)
    for kind, q in (("event", s._event_q), ("intent", s._intent_q)):
        assert 88 <= len(q) <= 100  # pruned an eighth below the limit each time
        assert s.counters[f"{kind}_queue_pruned"] == 399 - len(q)


def _relay(dest_ip: str, dest_name: str, inner: bytes) -> bytes:
    header = pack_gossip({b"DestAddr": {b"IP": ip_to_bytes(dest_ip), b"Port": 7946, b"Zone": b""},
                          b"DestName": dest_name.encode()})
    return bytes((SerfMsgType.RELAY,)) + header + inner


def test_relays_go_only_to_members_and_only_carry_responses() -> None:
    s = make_serf()
    add_members(s, 3)
    sent(s)
    resp = MessageQueryResponse(ltime=1, id=1, from_="m1", flags=0, payload=b"r").encode()
    s.notify_msg(_relay("10.0.0.1", "m0", resp), 1.0)
    assert sent(s) == [(("10.0.0.1", 7946), resp)]
    s.notify_msg(_relay("192.0.2.7", "victim", resp), 1.0)  # not a member
    s.notify_msg(_relay("192.0.2.7", "m0", resp), 1.0)  # a member's name, another address
    s.notify_msg(_relay("10.0.0.1", "m0", query(4)), 1.0)  # not a response
    s.notify_msg(_relay("10.0.0.1", "m0", _relay("10.0.0.2", "m1", resp)), 1.0)  # nested
    assert sent(s) == []
    assert s.counters["relay_refused"] == 4


# ---------------------------------------------------------------------------- memberlist


def _packet(*msgs: bytes) -> bytes:
    return encode_packet(list(msgs), compress=False, crc=False)


def test_indirect_pings_served_at_once_are_capped() -> None:
    class Quiet:
        def node_meta(self, limit: int) -> bytes:
            return b""

        def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
            return []

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    cfg = MemberlistConfig.from_profile("lan", name="me", advertise_addr="10.9.0.1",
                                        max_indirect_pings=32, catch_up=False)
    ml = Memberlist(cfg, Quiet(), random.Random(1), 0.0)
    ml.datagrams_to_send()
    for i in range(500):
        ind = IndirectPing(i, ip_to_bytes("10.9.1.1"), 7946, "t", True,
                           ip_to_bytes("10.9.2.2"), 7946, "peer")
        ml.receive_datagram(_packet(ind.encode()), ("10.9.2.2", 7946), 0.01)
    assert ml._indirect == 32 and len(ml._acks) <= 32 + 1
    assert len(ml.datagrams_to_send()) == 32
    assert ml.counters["indirect_ping_refused"] == 468
    ml.handle_timer(cfg.probe_timeout + 0.02)
    assert ml._indirect == 0  # their time is up: room again
    ml.receive_datagram(_packet(IndirectPing(999, ip_to_bytes("10.9.1.1"), 7946, "t", False,
                                             ip_to_bytes("10.9.2.2"), 7946, "peer").encode()),
                        ("10.9.2.2", 7946), 1.0)
    assert ml._indirect == 1


# ---------------------------------------------------------------------------- state machine


class RecordingMemberlist(Memberlist):
    """The real memberlist core, also keeping every user message Serf sends."""

    def __init__(self, *args: Any) -> None:
        self.user_sent: list[tuple[tuple[str, int], bytes]] = []
        super().__init__(*args)

    def send_user_msg(self, addr: tuple[str, int], data: bytes) -> None:
        self.user_sent.append((addr, data))
        super().send_user_msg(addr, data)


# Small bounds, so a few dozen steps reach every one of them.
SMALL = {
    "event_buffer": 16,
    "query_buffer": 16,
    "max_query_timeout": 30.0,
    "max_relay_factor": 2,
    "max_answering": 8,
    "max_asking": 4,
    "max_query_answers": 6,
    "max_query_answer_bytes": 3000,
    "max_query_ids_per_ltime": 4,
    "max_events_per_ltime": 4,
    "max_event_buffer_bytes": 3000,
    "max_intents": 8,
    "max_intent_bytes": 1500,
    "max_pending_events": 10,
    "max_queue_depth": 12,
    "max_message_size": 16 * 1024,
    "query_response_size_limit": 200,
}
PEERS = [f"p{i}" for i in range(6)]
names = st.one_of(st.sampled_from([*PEERS, "ghost", "me"]),
                  st.text(min_size=1, max_size=40),
                  st.integers(0, 10_000).map(lambda i: f"ghost{i}"))
ltime_offsets = st.one_of(st.integers(-40, 40), st.sampled_from([-(2**40), 2**40]))
extreme_ltimes = st.sampled_from([0, 1, 2**32, 2**63, MAX_LTIME - 1, MAX_LTIME])
timeouts = st.one_of(st.sampled_from([0, 1, 10**9, 1000 * HOUR_NS, MAX_NS, -5]),
                     st.integers(0, MAX_NS))
payloads = st.one_of(st.none(), st.binary(max_size=300), st.sampled_from([b"x" * 5000,
                                                                          b"y" * 10_000]))


class HostilePeer(RuleBasedStateMachine):
    """Random peer traffic at one Serf; every bound is checked after each step."""

    @initialize(seed=st.integers(0, 2**32))
    def setup(self, seed: int) -> None:
        self.now = 0.0
        mlc = MemberlistConfig.from_profile("lan", name="me", advertise_addr="10.7.0.1",
                                            enable_compression=False, max_indirect_pings=4)
        cfg = SerfConfig(node_name="me", memberlist=mlc, **SMALL)  # type: ignore[arg-type]
        made: list[RecordingMemberlist] = []

        def factory(*args: Any) -> RecordingMemberlist:
            made.append(RecordingMemberlist(*args))
            return made[-1]

        self.serf = Serf(cfg, random.Random(seed), 0.0, memberlist_factory=factory)
        [self._ml] = made
        self.cfg = cfg
        self.inc = 1
        for i, p in enumerate(PEERS):
            self._alive(p, i)
        self._flush()

    # -------------------------------------------------------------- helpers

    @property
    def ml(self) -> RecordingMemberlist:
        return self._ml

    def _alive(self, name: str, i: int) -> None:
        self.inc += 1
        a = Alive(self.inc, name, ip_to_bytes(f"10.7.1.{i + 1}"), 7946, b"",
                  bytes([1, 5, 2, 2, 5, 5]))
        self.serf.receive_datagram(_packet(a.encode()), (f"10.7.1.{i + 1}", 7946), self.now)

    def _flush(self) -> None:
        self.serf.datagrams_to_send()
        for req in self.serf.streams_to_open():
            self.serf.stream_outcome(req.token, None, self.now, "i/o timeout")
        self.ml.user_sent.clear()

    def _from_peer(self, data: bytes) -> list[tuple[tuple[str, int], bytes]]:
        before = len(self.ml.user_sent)
        self.serf.receive_datagram(_packet(bytes((MsgType.USER,)) + data), ("10.7.1.1", 7946),
                                   self.now)
        out = self.ml.user_sent[before:]
        # One peer message makes at most an ack and a response, each with its relays,
        # plus one forwarded relay (news is gossiped, eagerly or not: no direct sends).
        assert relays(out) <= 2 * self.cfg.max_relay_factor
        assert len(out) <= 2 * (1 + self.cfg.max_relay_factor) + 1
        self._flush()
        return out

    def _ltime(self, clock: int, offset: int, extreme: int | None) -> int:
        if extreme is not None:
            return extreme
        return min(MAX_LTIME, max(0, clock + offset))

    # -------------------------------------------------------------- peer messages

    @rule(offset=ltime_offsets, extreme=st.none() | extreme_ltimes, name=names,
          payload=payloads, count=st.integers(1, 12), spread=st.booleans())
    def user_events(self, offset: int, extreme: int | None, name: str, payload: bytes | None,
                    count: int, spread: bool) -> None:
        lt = self._ltime(self.serf.event_clock.time(), offset, extreme)
        for i in range(count):
            self._from_peer(MessageUserEvent(ltime=min(MAX_LTIME, lt + i * spread),
                                             name=f"{name}{i}", payload=payload,
                                             cc=False).encode())

    @rule(offset=ltime_offsets, extreme=st.none() | extreme_ltimes,
          ids=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12),
          timeout=timeouts, relay=st.integers(0, 255), flags=st.sampled_from([0, 1, 2, 3]),
          name=st.sampled_from(["q", "_serf_ping", "_serf_conflict", "_serf_bogus", "deploy"]),
          source=names)
    def queries(self, offset: int, extreme: int | None, ids: list[int], timeout: int,
                relay: int, flags: int, name: str, source: str) -> None:
        lt = self._ltime(self.serf.query_clock.time(), offset, extreme)
        for qid in ids:
            self._from_peer(MessageQuery(
                ltime=lt, id=qid, addr=ip_to_bytes("10.7.1.2"), port=7946, source_node=source,
                filters=None, flags=flags, relay_factor=relay, timeout=timeout, name=name,
                payload=b"me" if name == "_serf_conflict" else None).encode())

    @rule(data=st.data(), count=st.integers(1, 60), ack=st.booleans(), payload=payloads,
          wrong=st.booleans())
    def responses(self, data: st.DataObject, count: int, ack: bool, payload: bytes | None,
                  wrong: bool) -> None:
        asking = list(self.serf._asking.values())
        if asking and not wrong:
            pq = data.draw(st.sampled_from(asking))
            lt, qid = pq.ltime, pq.id
        else:
            lt, qid = data.draw(st.integers(0, MAX_LTIME)), data.draw(st.integers(0, 2**32 - 1))
        base = data.draw(names)
        for i in range(count):
            self._from_peer(MessageQueryResponse(
                ltime=lt, id=qid, from_=f"{base}{i}", flags=QUERY_FLAG_ACK if ack else 0,
                payload=payload).encode())

    @rule(offset=ltime_offsets, extreme=st.none() | extreme_ltimes, node=names,
          leave=st.booleans(), prune=st.booleans(), count=st.integers(1, 12))
    def intents(self, offset: int, extreme: int | None, node: str, leave: bool, prune: bool,
                count: int) -> None:
        lt = self._ltime(self.serf.clock.time(), offset, extreme)
        for i in range(count):
            who = node if node in PEERS and count == 1 else f"{node}{i}"
            msg = (MessageLeave(ltime=min(MAX_LTIME, lt + i), node=who, prune=prune) if leave
                   else MessageJoin(ltime=lt, node=who))
            self._from_peer(msg.encode())

    @rule(dest=st.sampled_from([*PEERS, "victim"]), ip=st.sampled_from(["10.7.1.3", "192.0.2.9"]),
          inner=st.one_of(st.binary(max_size=50), st.just(
              MessageQueryResponse(ltime=1, id=1, from_="x", flags=0, payload=None).encode())))
    def relay(self, dest: str, ip: str, inner: bytes) -> None:
        member = {m.name: m for m in self.serf.members()}.get(dest)
        allowed = member is not None and member.addr == ip and inner[:1] == b"\x05"
        out = self._from_peer(_relay(ip, dest, inner))
        assert out == ([((ip, 7946), inner)] if allowed else [])

    @rule(data=st.one_of(st.binary(max_size=200), st.just(b"\x03" + b"z" * 20_000)))
    def garbage(self, data: bytes) -> None:
        self._from_peer(data)

    @rule(kind=st.sampled_from(list(SerfMsgType)), data=st.binary(max_size=100))
    def garbage_typed(self, kind: SerfMsgType, data: bytes) -> None:
        self._from_peer(bytes((kind,)) + data)

    @rule(nodes=st.lists(names, max_size=30), offset=ltime_offsets,
          extreme=st.none() | extreme_ltimes, events=st.integers(0, 20), payload=payloads)
    def push_pull(self, nodes: list[str], offset: int, extreme: int | None, events: int,
                  payload: bytes | None) -> None:
        lt = self._ltime(self.serf.event_clock.time(), offset, extreme)
        slots = tuple(UserEvents(min(MAX_LTIME, lt + i % 3), (
            UserEventRecord(f"pp{i}", payload),)) for i in range(events))
        pp = MessagePushPull(ltime=lt, status_ltimes=dict.fromkeys(nodes, lt),
                             left_members=tuple(nodes[::2]), event_ltime=lt, events=slots,
                             query_ltime=lt)
        plain = encode_push_pull(False, [], pp.encode())
        self.serf.receive_stream(plain, ("10.7.1.1", 7946), self.now)
        self._flush()

    @rule(count=st.integers(1, 12))
    def indirect_pings(self, count: int) -> None:
        for i in range(count):
            ind = IndirectPing(i, ip_to_bytes("10.7.9.9"), 7946, "t", bool(i % 2),
                               ip_to_bytes("10.7.1.1"), 7946, "p0")
            self.serf.receive_datagram(_packet(ind.encode()), ("10.7.1.1", 7946), self.now)
        self._flush()

    @rule(i=st.integers(0, len(PEERS) - 1))
    def peer_alive(self, i: int) -> None:
        self._alive(PEERS[i], i)
        self._flush()

    # -------------------------------------------------------------- local side

    @rule(timeout=st.one_of(st.floats(0, 60), st.sampled_from([3.6e6, 1e18])),
          relay=st.integers(0, 255), ack=st.booleans(), count=st.integers(1, 6))
    def ask(self, timeout: float, relay: int, ack: bool, count: int) -> None:
        for _ in range(count):
            full = len(self.serf._asking) >= self.cfg.max_asking
            try:
                self.serf.query("ask", b"", QueryParam(timeout=timeout, relay_factor=relay,
                                                       request_ack=ack), self.now)
            except SerfError as e:
                assert full or timeout > self.cfg.max_query_timeout, e
            else:
                assert not full and timeout <= self.cfg.max_query_timeout
            self._flush()

    @rule()
    def drain(self) -> None:
        for ev in self.serf.drain_events():
            if isinstance(ev, IncomingQuery):
                with contextlib.suppress(SerfError):
                    self.serf.respond(ev, b"ok", self.now)
        self._flush()

    @rule(dt=st.one_of(st.floats(0, 2), st.sampled_from([15.0, 31.0, 301.0, 3600.0])))
    def advance(self, dt: float) -> None:
        self.now += dt
        for _ in range(10_000):
            t = self.serf.get_timer()
            if t is None or t > self.now:
                break
            self.serf.handle_timer(max(t, self.ml._clock))
            self._flush()
        self.serf.handle_timer(self.now)
        self._flush()
        # Time bounds: nothing outlives its deadline.
        assert all(a.deadline > self.now for a in self.serf._answering.values())
        assert all(pq.deadline > self.now for pq in self.serf._asking.values())
        assert all(t > self.now for t in self.serf._prunes.values())
        cfg = self.cfg
        assert all(self.now - i.wall <= cfg.recent_intent_timeout + cfg.reap_interval
                   for i in self.serf._intents.values())

    # -------------------------------------------------------------- invariants

    @invariant()
    def bounds_hold(self) -> None:
        s, cfg, now = self.serf, self.cfg, self.now
        # Queries we answer: count, deadline, relay factor.
        assert len(s._answering) <= cfg.max_answering
        for a in s._answering.values():
            assert a.deadline <= now + cfg.max_query_timeout
            assert 0 <= a.relay_factor <= cfg.max_relay_factor
        # Queries we ask: count, deadline, answers kept.
        assert len(s._asking) <= cfg.max_asking
        for pq in s._asking.values():
            assert pq.deadline <= now + cfg.max_query_timeout
            assert len(pq.acks) <= pq.max_answers and len(pq.responses) <= pq.max_answers
            assert pq.used_bytes <= pq.max_bytes
            assert len(pq.records) <= 2 * pq.max_answers + 1
        # Dedup rings.
        for qslot in s._query_buffer:
            assert qslot is None or len(qslot[1]) <= cfg.max_query_ids_per_ltime
        held = 0
        for eslot in s._event_buffer:
            if eslot is not None:
                assert len(eslot.events) <= cfg.max_events_per_ltime
                held += sum(len(r.name.encode("utf-8", "surrogateescape"))
                            + len(r.payload or b"") + ENTRY_OVERHEAD for r in eslot.events)
        assert held == s._event_bytes <= cfg.max_event_buffer_bytes
        # Intents and prunes.
        assert len(s._intents) <= cfg.max_intents
        ibytes = sum(len(n.encode("utf-8", "surrogateescape")) + ENTRY_OVERHEAD
                     for n in s._intents)
        assert ibytes == s._intent_bytes <= cfg.max_intent_bytes
        assert set(s._prunes) <= {m.name for m in s.members()} | set(s._prunes)
        assert len(s._prunes) <= len(s.members())
        for due in s._prunes.values():
            assert due <= now + cfg.broadcast_timeout + cfg.leave_propagate_delay
        # Queues.
        pending = sum(1 for e in s._events if isinstance(e, UserEvent | IncomingQuery))
        assert pending == s._pending_user <= cfg.max_pending_events
        for q in (s._intent_q, s._event_q, s._query_q):
            assert len(q) <= cfg.max_queue_depth
        # memberlist: indirect pings in progress and their ack handlers.
        ml = self.ml
        assert ml._indirect <= ml.config.max_indirect_pings
        assert len(ml._acks) <= ml.config.max_indirect_pings + 1
        # Clocks stay encodable: our push/pull state and our own messages still work.
        for clock in (s.clock, s.event_clock, s.query_clock):
            assert 0 < clock.time() <= MAX_LTIME
        MessagePushPull.from_body(s.local_state(False)[1:])
        assert all(v >= 0 for v in s.counters.values())


HostilePeer.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_hostile_peer_keeps_every_structure_within_its_bound = HostilePeer.TestCase



def test_the_agent_keeps_queries_open_as_long_as_a_handler_may_answer() -> None:
    from serfd.agent.agent import Agent
    from serfd.agent.config import Config

    def cap(handler_timeout: float) -> float:
        cfg = Config(node_name="a", bind=("127.0.0.1", 7946), advertise=("127.0.0.1", 7946),
                     handler_timeout=handler_timeout)
        return Agent(cfg)._make_serf(0.0).config.max_query_timeout

    assert cap(60.0) == DEFAULT_MAX_QUERY_TIMEOUT == 300.0
    assert cap(900.0) == 900.0


def test_name_conflict_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    mlc = MemberlistConfig.from_profile("lan", name="me", advertise_addr="10.8.0.1",
                                        enable_compression=False)
    s = Serf(SerfConfig(node_name="me", memberlist=mlc, enable_name_conflict_resolution=False),
             random.Random(1), 0.0)
    vsn = bytes([1, 5, 2, 2, 5, 5])
    first = Alive(1, "peer", ip_to_bytes("10.8.0.2"), 7946, b"", vsn)
    s.receive_datagram(_packet(first.encode()), ("10.8.0.2", 7946), 0.1)
    with caplog.at_level(logging.WARNING, "serfd.serf"):
        for i in range(200):
            for name in ("peer", "me"):  # another node's name, and ours
                other = Alive(5 + i, name, ip_to_bytes("10.8.0.66"), 7946, b"", vsn)
                s.receive_datagram(_packet(other.encode()), ("10.8.0.66", 7946),
                                              1.0 + i / 100)
    assert s.counters_view().dropped["conflict"] == 400  # all counted
    lines = [r for r in caplog.records if "name conflict" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.ERROR]
