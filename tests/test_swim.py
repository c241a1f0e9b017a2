"""Focused behaviour of the SWIM core (serfd.memberlist.swim), one rule at a time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.memberlist.swim import Memberlist, MemberlistConfig, ProtocolError, push_pull_scale
from serfd.testing.sim import FakeDelegate
from serfd.wire.codec import DecodeError
from serfd.wire.framing import decode_push_pull, encode_push_pull, encode_user_stream
from serfd.wire.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MsgType,
    Nack,
    NodeStateType,
    Ping,
    PushNodeState,
    Suspect,
    decode_message,
    ip_to_bytes,
)
from serfd.wire.packet import decode_packet, encode_packet

ALIVE = NodeStateType.ALIVE
SUSPECT = NodeStateType.SUSPECT
DEAD = NodeStateType.DEAD
LEFT = NodeStateType.LEFT
PEER = ("10.0.0.9", 7946)


def core(
    name: str = "me", addr: str = "10.0.0.1", **overrides: object
) -> tuple[Memberlist, FakeDelegate, list[tuple[str, str]]]:
    """A lone core with compression off and a delegate that logs (kind, node)."""
    log: list[tuple[str, str]] = []
    d = FakeDelegate(name, lambda e: log.append((e.kind, e.node)), meta=b"m")
    cfg = MemberlistConfig(
        name=name,
        advertise_addr=addr,
        enable_compression=False,
        **overrides,  # type: ignore[arg-type]
    )
    return Memberlist(cfg, d, random.Random(1), 0.0), d, log


def sent(m: Memberlist) -> list[tuple[list[object], tuple[str, int]]]:
    """Drain and decode everything the core sent."""
    out = []
    for data, addr in m.datagrams_to_send():
        out.append(([decode_message(p) for p in decode_packet(data)], addr))
    return out


def alive(name: str, inc: int, ip: str = "10.0.0.2", port: int = 7946, **kw: object) -> bytes:
    return Alive(
        inc, name, ip_to_bytes(ip), port, kw.get("meta", b""), kw.get("vsn", DEFAULT_VSN)
    ).encode()  # type: ignore[arg-type]


def feed(m: Memberlist, *msgs: bytes, now: float = 1.0) -> None:
    m.receive_datagram(encode_packet(list(msgs), compress=False, crc=False), PEER, now)


# ------------------------------------------------------------------ startup, meta, alive


def test_starts_alive_at_incarnation_one_and_joins_itself() -> None:
    m, _d, log = core()
    me = m.local_node()
    assert (me.state, me.incarnation, me.vsn, me.meta) == (ALIVE, 1, DEFAULT_VSN, b"m")
    assert log == [("join", "me")]
    assert m.num_alive() == 1
    assert m.get_timer() is not None


def test_update_meta_bumps_incarnation_and_notifies_update() -> None:
    m, d, log = core()
    d.meta = b"new"
    m.update_meta(1.0)
    assert m.local_node().incarnation == 2
    assert m.local_node().meta == b"new"
    assert log[-1] == ("update", "me")
    assert not m.update_broadcast_done() or m.num_alive() == 1


def test_alive_rules_join_update_and_stale() -> None:
    m, _, log = core()
    feed(m, alive("a", 3))
    assert m.get_node("a").state == ALIVE  # type: ignore[union-attr]
    assert log[-1] == ("join", "a")
    feed(m, alive("a", 3, meta=b"x"))  # same incarnation: ignored
    assert m.get_node("a").meta == b""  # type: ignore[union-attr]
    feed(m, alive("a", 4, meta=b"x"))
    assert m.get_node("a").meta == b"x"  # type: ignore[union-attr]
    assert log[-1] == ("update", "a")
    feed(m, alive("a", 5, meta=b"x"))  # newer, same meta: no event
    assert log[-1] == ("update", "a")
    assert m.get_node("a").incarnation == 5  # type: ignore[union-attr]


def test_alive_with_bad_vsn_is_ignored() -> None:
    m, _, _ = core()
    feed(m, alive("a", 1, vsn=bytes([0, 5, 2, 2, 5, 5])))
    feed(m, alive("b", 1, vsn=bytes([5, 1, 2, 2, 5, 5])))
    assert m.get_node("a") is None and m.get_node("b") is None
    assert m.counters["alive_bad_vsn"] == 2


def test_conflicting_address_goes_to_the_delegate() -> None:
    m, _, log = core()
    feed(m, alive("a", 1, ip="10.0.0.2"))
    feed(m, alive("a", 9, ip="10.0.0.3"))
    assert m.get_node("a").addr == "10.0.0.2"  # type: ignore[union-attr]
    assert log[-1] == ("conflict", "a")


def test_left_node_may_come_back_on_a_new_address() -> None:
    m, _, log = core()
    feed(m, alive("a", 1, ip="10.0.0.2"))
    feed(m, Dead(1, "a", "a").encode())
    assert m.get_node("a").state == LEFT  # type: ignore[union-attr]
    feed(m, alive("a", 1, ip="10.0.0.3"))  # same incarnation is fine for an address update
    node = m.get_node("a")
    assert node is not None and (node.state, node.addr) == (ALIVE, "10.0.0.3")
    assert log[-1] == ("join", "a")


def test_dead_from_self_is_left_else_dead() -> None:
    m, _, log = core()
    feed(m, alive("a", 1), alive("b", 1))
    feed(m, Dead(1, "a", "a").encode(), Dead(1, "b", "x").encode())
    assert m.get_node("a").state == LEFT  # type: ignore[union-attr]
    assert m.get_node("b").state == DEAD  # type: ignore[union-attr]
    assert ("leave", "a") in log and ("leave", "b") in log
    assert m.num_alive() == 1
    feed(m, Dead(0, "c", "x").encode())  # unknown: ignored


def test_refutes_suspect_and_dead_about_itself() -> None:
    m, _, _ = core()
    feed(m, Suspect(1, "me", "x").encode())
    assert m.local_node().incarnation == 2
    assert m.local_node().state == ALIVE
    assert m.health_score() == 1
    feed(m, Dead(7, "me", "x").encode())  # jumps past the accuser
    assert m.local_node().incarnation == 8
    feed(m, alive("me", 20, ip="10.0.0.1"))  # a newer alive for us with other meta
    assert m.local_node().incarnation == 21
    # The refutation is queued: the next ping carries it.
    feed(m, Ping(5, "me").encode())
    ((msgs, _),) = sent(m)
    assert any(isinstance(x, Alive) and x.node == "me" and x.incarnation == 21 for x in msgs)


# ------------------------------------------------------------------ ping serving


def test_ping_acked_to_source_address_with_piggyback() -> None:
    m, _, _ = core()
    feed(m, alive("a", 1))
    m.datagrams_to_send()
    feed(m, Ping(7, "me", ip_to_bytes("10.0.0.5"), 8000, "p").encode())
    ((msgs, addr),) = sent(m)
    assert addr == ("10.0.0.5", 8000)
    assert msgs[0] == Ack(7, None)
    assert any(isinstance(x, Alive) for x in msgs[1:])  # broadcasts ride along


def test_ping_for_someone_else_is_ignored_and_no_source_means_udp_source() -> None:
    m, _, _ = core()
    feed(m, Ping(1, "other").encode())
    assert sent(m) == []
    assert m.counters["ping_wrong_node"] == 1
    feed(m, Ping(2, "").encode())
    ((msgs, addr),) = sent(m)
    assert addr == PEER and isinstance(msgs[0], Ack)


def test_indirect_ping_forwards_ack_or_nacks_after_probe_timeout() -> None:
    m, _, _ = core()
    req = IndirectPing(
        40, ip_to_bytes("10.0.0.7"), 7946, "t", True, ip_to_bytes("10.0.0.5"), 9000, "r"
    )
    feed(m, req.encode(), now=1.0)
    ((msgs, addr),) = sent(m)
    assert addr == ("10.0.0.7", 7946)
    ping = msgs[0]
    assert isinstance(ping, Ping) and ping.node == "t" and ping.source_node == "me"
    # An ack from the target is forwarded with the requester's sequence number.
    m.receive_datagram(Ack(ping.seq_no, b"p").encode(), ("10.0.0.7", 7946), 1.1)
    ((msgs, addr),) = sent(m)
    assert addr == ("10.0.0.5", 9000) and msgs[0] == Ack(40, None)
    m.handle_timer(1.6)
    assert sent(m) == []  # acked: no nack
    # Without an ack, a nack after ProbeTimeout (0.5 s).
    feed(m, IndirectPing(41, ip_to_bytes("10.0.0.7"), 0, "t", True).encode(), now=2.0)
    sent(m)
    m.handle_timer(2.49)
    assert sent(m) == []
    m.handle_timer(2.5)
    ((msgs, addr),) = sent(m)
    assert msgs[0] == Nack(41) and addr == PEER


def test_probed_by_an_unknown_member_we_push_pull_with_it_bounded() -> None:
    """serfd's catch-up: a prober we do not know as live learns we are alive from our
    ack, so we learn the cluster from it (Join=true, as a reconnect). A peer names the
    prober, so it is one exchange in flight and one per ProbeInterval, the rest counted."""
    m, _, _ = core()
    feed(m, alive("a", 1))
    m.datagrams_to_send()
    feed(m, Ping(1, "me", ip_to_bytes("10.0.0.2"), 7946, "a").encode(), now=1.0)
    assert m.streams_to_open() == []  # a known live prober: nothing to learn
    for i in range(50):  # a burst of pings naming strangers (or a spoofer)
        src = ip_to_bytes(f"10.0.1.{i}")
        feed(m, Ping(10 + i, "me", src, 7946, f"x{i}").encode(), now=1.0 + i / 1000)
    (req,) = m.streams_to_open()
    assert (req.kind, req.addr) == ("push_pull", ("10.0.1.0", 7946))
    assert decode_push_pull(req.plain)[0].join
    assert m.activity["catch_up_push_pull"] == 1
    assert m.counters["catch_up_deferred"] == 49
    # The reply teaches us the cluster; the next stranger waits for ProbeInterval (1 s).
    reply = encode_push_pull(
        True, [PushNodeState("x0", ip_to_bytes("10.0.1.0"), 7946, b"", 4, 0, DEFAULT_VSN)], b""
    )
    m.stream_outcome(req.token, reply, 1.1)
    assert m.get_node("x0").state == ALIVE  # type: ignore[union-attr]
    feed(m, Ping(90, "me", ip_to_bytes("10.0.2.1"), 7946, "y").encode(), now=1.5)
    assert m.streams_to_open() == []
    feed(m, IndirectPing(91, ip_to_bytes("10.0.0.2"), 7946, "a", True,
                         ip_to_bytes("10.0.2.1"), 7946, "y").encode(), now=2.1)
    (req,) = m.streams_to_open()  # an indirect probe request counts too
    assert req.addr == ("10.0.2.1", 7946)
    # A push/pull that never reports back frees the slot after TCPTimeout (10 s).
    feed(m, Ping(92, "me", ip_to_bytes("10.0.2.2"), 7946, "z").encode(), now=5.0)
    assert m.streams_to_open() == []
    feed(m, Ping(93, "me", ip_to_bytes("10.0.2.2"), 7946, "z").encode(), now=12.2)
    assert len(m.streams_to_open()) == 1
    assert m.activity["catch_up_push_pull"] == 3


def test_catch_up_off_is_memberlist() -> None:
    m, _, _ = core(catch_up=False)
    feed(m, Ping(1, "me", ip_to_bytes("10.0.1.1"), 7946, "stranger").encode())
    assert m.streams_to_open() == []
    assert "catch_up_push_pull" not in m.activity


# ------------------------------------------------------------------ probing


def _two_peers(**overrides: object) -> tuple[Memberlist, list[tuple[str, str]]]:
    m, _, log = core(**overrides)
    feed(m, alive("a", 1, ip="10.0.0.2"), alive("b", 1, ip="10.0.0.3"), now=0.0)
    m.datagrams_to_send()
    return m, log


def _run_to_first_ping(m: Memberlist) -> tuple[Ping, tuple[str, int]]:
    ping, addr, _ = _run_to_ping(m)
    return ping, addr


def _run_to_ping(m: Memberlist) -> tuple[Ping, tuple[str, int], float]:
    """Run timers until the core sends a ping; return it, where to, and when."""
    while True:
        t = m.get_timer()
        assert t is not None
        m.handle_timer(t)
        for msgs, addr in sent(m):
            if isinstance(msgs[0], Ping):
                return msgs[0], addr, t


def quiet(m: Memberlist) -> Memberlist:
    """Cancel the periodic ticks (test-only: reaches into the timer heap and the gossip
    ticker)."""
    m._timers.clear()
    m._gossip_at = None
    return m


def test_probe_ack_keeps_the_node_alive() -> None:
    m, _ = _two_peers()
    ping, addr = _run_to_first_ping(m)
    now = m.get_timer()
    m.receive_datagram(Ack(ping.seq_no).encode(), addr, now)  # type: ignore[arg-type]
    m.handle_timer(now + 5)  # type: ignore[operator]
    assert m.get_node(ping.node).state == ALIVE  # type: ignore[union-attr]
    assert m.health_score() == 0


def test_failed_probe_goes_indirect_with_nack_then_suspects_and_awareness_grows() -> None:
    m, _log = _two_peers(disable_tcp_pings=True)
    ping, _ = _run_to_first_ping(m)
    # Nothing answers. After ProbeTimeout the other peer gets an indirect ping with Nack.
    indirect: list[tuple[IndirectPing, tuple[str, int]]] = []
    t = 0.0
    while not indirect:
        t = m.get_timer()  # type: ignore[assignment]
        m.handle_timer(t)
        indirect = [(x, a) for msgs, a in sent(m) for x in msgs if isinstance(x, IndirectPing)]
    ((ind, via),) = indirect
    other = "b" if ping.node == "a" else "a"
    assert ind.seq_no == ping.seq_no and ind.node == ping.node and ind.nack is True
    assert via == m.get_node(other).address  # type: ignore[union-attr]
    assert m.streams_to_open() == []  # TCP pings disabled
    # The helper sends a nack; no ack arrives until the probe interval ends.
    m.receive_datagram(Nack(ind.seq_no).encode(), via, t)
    for _ in range(200):
        if m.get_node(ping.node).state == SUSPECT:  # type: ignore[union-attr]
            break
        m.handle_timer(m.get_timer())  # type: ignore[arg-type]
    assert m.get_node(ping.node).state == SUSPECT  # type: ignore[union-attr]
    assert m.health_score() == 0  # one nack expected, one received: no penalty
    assert m.counters["probe_failed"] == 1


def test_awareness_grows_when_expected_nacks_are_missing() -> None:
    m, _ = _two_peers(disable_tcp_pings=True)
    pings: list[float] = []  # when each probe ping went out
    failed_at: list[float] = []
    while len(failed_at) < 2:
        t = m.get_timer()
        assert t is not None
        m.handle_timer(t)
        pings += [t for msgs, _ in sent(m) if isinstance(msgs[0], Ping)]
        if m.counters.get("probe_failed", 0) > len(failed_at):
            failed_at.append(t)
            if len(failed_at) == 1:
                # The one expected nack never came: awareness 1.
                assert m.health_score() == 1
    # First probe gave up after ProbeInterval, the second after 2 x ProbeInterval.
    assert failed_at[0] - pings[0] == pytest.approx(1.0)
    assert failed_at[1] - pings[1] == pytest.approx(2.0)
    assert m.health_score() == 2


def test_tcp_fallback_ping_prevents_suspicion() -> None:
    m, _ = _two_peers()
    ping, addr = _run_to_first_ping(m)
    streams = []
    while not streams:
        m.handle_timer(m.get_timer())  # type: ignore[arg-type]
        m.datagrams_to_send()
        streams = m.streams_to_open()
    (req,) = [s for s in streams if s.kind == "ping"]
    assert req.addr == addr and req.expect_reply
    assert decode_message(req.plain) == ping
    target = m.get_node(ping.node)
    m.stream_outcome(req.token, Ack(ping.seq_no).encode(), req.deadline - 0.1)
    # Up to the probe's deadline (later probes of the same silent node would fail).
    while (t := m.get_timer()) is not None and t <= req.deadline:
        m.handle_timer(t)
    assert m.counters.get("probe_failed", 0) == 0
    assert m.get_node(ping.node).state == ALIVE  # type: ignore[union-attr]
    assert target is not None and m.counters["probe_tcp_only"] == 1


def test_ping_to_suspect_carries_the_suspicion() -> None:
    m, _ = _two_peers()
    feed(m, Suspect(1, "a", "x").encode(), Suspect(1, "b", "x").encode(), now=0.0)
    m.datagrams_to_send()
    t = 0.0
    while True:
        t = m.get_timer()  # type: ignore[assignment]
        m.handle_timer(t)
        pings = [msgs for msgs, _ in sent(m) if isinstance(msgs[0], Ping)]
        if pings:
            break
    (msgs,) = pings
    assert isinstance(msgs[1], Suspect) and msgs[1].node == msgs[0].node  # type: ignore[attr-defined]


# ------------------------------------------------------------------ suspicion timing


def test_suspicion_confirmations_shorten_the_timeout() -> None:
    m, _, log = core()
    quiet(m)
    for i, name in enumerate(["a", "b", "c", "d"]):
        feed(m, alive(name, 1, ip=f"10.0.0.{i + 2}"), now=0.0)
    # n = 5 nodes: k = 2, min 4 s, max 24 s.
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    assert m.get_node("a").state == SUSPECT  # type: ignore[union-attr]
    m.handle_timer(33.9)
    assert m.get_node("a").state == SUSPECT  # type: ignore[union-attr]
    feed(m, Suspect(1, "a", "c").encode(), now=11.0)  # total 11.381 s
    m.handle_timer(21.38)
    assert m.get_node("a").state == SUSPECT  # type: ignore[union-attr]
    m.handle_timer(21.382)
    assert m.get_node("a").state == DEAD  # type: ignore[union-attr]
    assert log[-1] == ("leave", "a")
    # Second suspicion: two confirmations bring it down to the 4 s minimum.
    feed(m, Suspect(1, "b", "a").encode(), now=30.0)
    feed(m, Suspect(1, "b", "c").encode(), now=30.5)
    feed(m, Suspect(1, "b", "d").encode(), now=31.0)
    m.handle_timer(33.99)
    assert m.get_node("b").state == SUSPECT  # type: ignore[union-attr]
    m.handle_timer(34.0)
    assert m.get_node("b").state == DEAD  # type: ignore[union-attr]


def test_refuted_suspicion_does_not_fire() -> None:
    m, _, _ = core()
    quiet(m)
    feed(m, alive("a", 1), alive("b", 1, ip="10.0.0.3"), now=0.0)
    feed(m, Suspect(1, "a", "b").encode(), now=1.0)
    feed(m, alive("a", 2), now=2.0)
    m.handle_timer(100.0)
    assert m.get_node("a").state == ALIVE  # type: ignore[union-attr]


# ------------------------------------------------------------------ gossip


def test_gossip_sends_queue_then_serf_broadcasts_as_user_messages() -> None:
    m, d, _ = core(probe_interval=0.0, push_pull_interval=0.0)
    feed(m, alive("a", 1), now=0.0)
    d.user_broadcasts = [b"serf-1", b"serf-2"]
    m.handle_timer(m.get_timer())  # type: ignore[arg-type]
    out = sent(m)
    assert out, "gossip round sent nothing"
    msgs, addr = out[0]
    assert addr == ("10.0.0.2", 7946)
    assert [x for x in msgs if not isinstance(x, Alive)] == [
        decode_message(b"\x08serf-1"),
        decode_message(b"\x08serf-2"),
    ]


def test_gossip_to_pmax5_peers_has_crc() -> None:
    m, _, _ = core(probe_interval=0.0, push_pull_interval=0.0)
    feed(m, alive("a", 1), now=0.0)
    m.handle_timer(m.get_timer())  # type: ignore[arg-type]
    data, _ = m.datagrams_to_send()[0]
    assert data[0] == MsgType.HAS_CRC


# ------------------------------------------------------------------ push/pull, streams


def test_push_pull_payload_and_merge_rules() -> None:
    m, d, _log = core()
    d.state = b"serf-state"
    feed(m, alive("a", 1), now=0.0)
    header, nodes, user = decode_push_pull(m.push_pull_payload(join=True))
    assert header.join is True and user == b"serf-state"
    assert {n.name for n in nodes} == {"me", "a"}
    remote = [
        PushNodeState("b", ip_to_bytes("10.0.0.3"), 7946, b"", 1, int(ALIVE), DEFAULT_VSN),
        PushNodeState("a", ip_to_bytes("10.0.0.2"), 7946, b"", 1, int(DEAD), DEFAULT_VSN),
        PushNodeState("c", ip_to_bytes("10.0.0.4"), 0, b"", 1, int(ALIVE), DEFAULT_VSN),
        PushNodeState("c2", ip_to_bytes("10.0.0.5"), 7946, b"", 1, int(LEFT), DEFAULT_VSN),
    ]
    m.merge_push_pull(encode_push_pull(False, remote, b"theirs"), False, 2.0)
    assert m.get_node("b").state == ALIVE  # type: ignore[union-attr]
    assert m.get_node("a").state == SUSPECT  # remote death is only a suspicion here
    assert m.get_node("c").port == 7946  # port 0 means our bind port
    assert m.get_node("c2") is None  # left for a node we never knew: nothing to do
    assert d.remote_states == [(b"theirs", False)]


def test_push_pull_with_incompatible_versions_is_refused() -> None:
    m, _, _ = core()
    bad = [PushNodeState("z", ip_to_bytes("10.0.0.9"), 7946, b"", 1, 0, bytes([1, 5, 2, 6, 6, 6]))]
    with pytest.raises(ProtocolError):
        m.merge_push_pull(encode_push_pull(False, bad, b""), False, 1.0)
    assert m.get_node("z") is None
    with pytest.raises(DecodeError):
        m.merge_push_pull(b"\x06\xc1", False, 1.0)


def test_receive_stream_answers_push_pull_ping_user_and_garbage() -> None:
    m, d, _ = core()
    theirs = encode_push_pull(
        True, [PushNodeState("b", ip_to_bytes("10.0.0.3"), 7946, b"", 1, 0, DEFAULT_VSN)], b""
    )
    reply = m.receive_stream(theirs, ("10.0.0.3", 50000), 1.0)
    assert reply is not None
    header, nodes, _ = decode_push_pull(reply)
    assert header.join is True and [n.name for n in nodes] == ["me"]  # our state before the merge
    assert m.get_node("b").state == ALIVE  # type: ignore[union-attr]
    assert decode_message(m.receive_stream(Ping(9, "me").encode(), PEER, 1.0)) == Ack(9, None)  # type: ignore[arg-type]
    assert m.receive_stream(Ping(9, "else").encode(), PEER, 1.0) is None
    assert m.receive_stream(encode_user_stream(b"hello"), PEER, 1.0) is None
    assert d.user_msgs == [b"hello"]
    err = m.receive_stream(b"\x04\xc1", PEER, 1.0)
    assert err is not None and err[0] == MsgType.ERR


def test_push_pull_timer_uses_stream_requests_and_merges_the_reply() -> None:
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 100) == 90.0
    m, _, _ = core(probe_interval=0.0, gossip_interval=0.0)
    feed(m, alive("a", 1), now=0.0)
    while True:
        m.handle_timer(m.get_timer())  # type: ignore[arg-type]
        reqs = m.streams_to_open()
        if reqs:
            break
    (req,) = reqs
    assert req.kind == "push_pull" and req.addr == ("10.0.0.2", 7946)
    reply = encode_push_pull(
        False, [PushNodeState("new", ip_to_bytes("10.0.0.8"), 7946, b"", 3, 0, DEFAULT_VSN)], b""
    )
    m.stream_outcome(req.token, reply, 40.0)
    assert m.get_node("new").incarnation == 3  # type: ignore[union-attr]
    m.stream_outcome(999, None, 40.0)  # unknown token: ignored


# ------------------------------------------------------------------ leave


def test_leave_broadcasts_dead_from_self_and_waits_for_it() -> None:
    m, _, log = core(probe_interval=0.0, push_pull_interval=0.0)
    assert m.leave_broadcast_done()  # nobody else alive
    feed(m, alive("a", 1), now=0.0)
    m.leave(1.0)
    assert m.local_node().state == LEFT and log[-1] == ("leave", "me")
    assert not m.leave_broadcast_done()
    t = 1.0
    while not m.leave_broadcast_done() and t < 10:
        t = m.get_timer()  # type: ignore[assignment]
        m.handle_timer(t)
        for msgs, _ in sent(m):
            assert any(isinstance(x, Dead) and x.node == x.from_ == "me" for x in msgs) or True
    assert m.leave_broadcast_done()
    feed(m, Suspect(1, "me", "a").encode(), now=t)  # no refutation once left
    assert m.local_node().state == LEFT


# ------------------------------------------------------------------ garbage


def test_garbage_datagrams_are_counted_not_raised() -> None:
    m, _, _ = core()
    for junk in [
        b"",
        b"\x00",
        b"\x07\x05",
        b"\x09\xff",
        b"\x0c\x00\x00\x00\x00\x04",
        b"\xff" * 20,
        b"\x04\x81\xa4Node\x05",
        b"\x0d\x80",
        Ping(1, "me").encode()[:3],
    ]:
        m.receive_datagram(junk, PEER, 1.0)
    assert sum(m.counters.values()) >= 8
    assert m.num_alive() == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_datagram_is_safe(data: bytes) -> None:
    m, _, _ = core()
    m.receive_datagram(data, PEER, 1.0)
    m.receive_stream(data, PEER, 1.0)


_names = st.sampled_from(["me", "a", "b"])
_msgs = st.one_of(
    st.builds(
        lambda n, i, ip: alive(n, i, ip=ip),
        _names,
        st.integers(0, 5),
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    ),
    st.builds(lambda n, i, f: Suspect(i, n, f).encode(), _names, st.integers(0, 5), _names),
    st.builds(lambda n, i, f: Dead(i, n, f).encode(), _names, st.integers(0, 5), _names),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_msgs, st.floats(0, 5)), max_size=25))
def test_state_machine_invariants(steps: list[tuple[bytes, float]]) -> None:
    """Any sequence of alive/suspect/dead: we are never suspect/dead ourselves, states
    stay valid, and notifications pair up (no leave without a join before it)."""
    m, _, log = core()
    quiet(m)
    now = 0.0
    for msg, dt in steps:
        now += dt
        feed(m, msg, now=now)
        m.handle_timer(now)
        assert m.local_node().state == ALIVE
    joined: set[str] = set()
    for kind, node in log:
        if kind == "join":
            assert node not in joined
            joined.add(node)
        elif kind == "leave":
            assert node in joined
            joined.discard(node)


def test_eager_gossip_skips_a_bulk_merge_but_not_one_newcomer() -> None:
    """Eager rounds (serfd) carry news a node is first to hear: a joiner's alive the seed
    merges from its push/pull. A joiner's merge of the seed's whole state is news to it
    alone; the next regular tick carries that."""

    def datagrams(eager: bool, n: int) -> int:
        m, _, _ = core(eager_gossip=eager)
        m.merge_push_pull(encode_push_pull(False, [  # a first member to talk to
            PushNodeState("a", ip_to_bytes("10.0.0.2"), 7946, b"", 1, 0, DEFAULT_VSN)
        ], b""), False, 0.5)
        m.handle_timer(0.5)
        m.datagrams_to_send()
        states = [PushNodeState(f"n{i}", ip_to_bytes(f"10.0.1.{i}"), 7946, b"", 1, 0,
                                DEFAULT_VSN) for i in range(n)]
        m.merge_push_pull(encode_push_pull(True, states, b""), True, 0.6)
        m.handle_timer(0.6)
        return len(m.datagrams_to_send())

    assert datagrams(True, 1) > datagrams(False, 1)  # one newcomer: pushed at once
    assert datagrams(True, 20) == datagrams(False, 20)  # a bulk merge: left to regular gossip


def test_eager_round_sends_news_at_once_within_its_retransmit_budget() -> None:
    """An eager round (serfd) is a gossip round run early: news leaves at once, to
    GossipNodes members, and those copies count against its retransmit budget, so it is
    sent exactly as often as memberlist sends it (issue 13: pushes on top of the budget,
    one packet each, cost 2.5x Serf's bytes in a burst of user events)."""

    def copies(eager: bool) -> list[float]:
        """When each copy of a newcomer's alive left, heard at t = 1.0."""
        m, _, _ = core(eager_gossip=eager, probe_interval=0.0, push_pull_interval=0.0)
        m.merge_push_pull(encode_push_pull(False, [
            PushNodeState(f"p{i}", ip_to_bytes(f"10.0.0.{i + 2}"), 7946, b"", 1, 0,
                          DEFAULT_VSN) for i in range(4)], b""), False, 0.5)
        now = 0.5
        while m.num_queued():  # the merge's own news runs out first
            m.handle_timer(now)
            m.datagrams_to_send()
            now = m.get_timer() or now
        assert now < 1.0
        m.handle_timer(1.0)
        m.datagrams_to_send()
        feed(m, alive("newbie", 1, ip="10.0.0.9"), now=1.0)
        out: list[float] = []
        now = 1.0
        while now < 10.0:
            m.handle_timer(now)
            for msgs, _addr in sent(m):
                out.extend(now for msg in msgs if isinstance(msg, Alive) and msg.node == "newbie")
            now = m.get_timer() or 10.0
        return out

    limit = 4 * 1  # RetransmitMult x ceil(log10(6 + 1)): 6 nodes
    eager, plain = copies(True), copies(False)
    assert len(eager) == len(plain) == limit
    assert eager[:3] == [1.0] * 3  # GossipNodes copies at once
    assert min(plain) > 1.0  # memberlist: at the next tick
